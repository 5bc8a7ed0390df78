#pragma once

// From Accept until Done: a heartbeat to the source every interval, so that it keeps this
// client's session, and `lost` once the source has answered none for the timeout (it died or
// froze), so that the transfer stops at once instead of waiting for the stall deadline. Owns
// the control socket while it runs, on a thread of its own: other messages (further Requests)
// go out through Send. Send, lost and why may be called from any thread.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/control_channel.h"
#include "netloader/client.h"

namespace netloader::internal {

class Heartbeats {
 public:
  // Starts beating at once over `control`, which must outlive this object.
  Heartbeats(ControlChannel& control, uint64_t session, const ClientOptions& options);
  // Stops the thread at once (it sleeps on a condition between beats).
  ~Heartbeats();
  Heartbeats(const Heartbeats&) = delete;
  Heartbeats& operator=(const Heartbeats&) = delete;

  // The transfer must stop: the source was lost, or the load was cancelled.
  const std::atomic<bool>& lost() const { return lost_; }
  // Why, once lost(): Cancelled, or Unavailable naming what happened to the source.
  Status why() const;
  // Queues a message for the source; it leaves at once.
  void Send(wire::Envelope message);

 private:
  void Loop();
  void Lose(const std::string& why);

  ControlChannel& control_;
  const uint64_t session_;
  const ClientOptions& options_;
  mutable std::mutex mu_;  // guards stop_, outbox_ and reason_
  std::condition_variable wake_;
  bool stop_ = false;
  std::vector<wire::Envelope> outbox_;
  std::atomic<bool> lost_{false};
  std::atomic<bool> cancelled_{false};
  std::string reason_;
  std::thread thread_;  // last: starts once every field above is ready
};

}  // namespace netloader::internal
