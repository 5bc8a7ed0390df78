#pragma once

// One admitted client's transfer: its MPI port, its streaming thread, and the mailbox through
// which the control thread hands it the client's Requests and Done.

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "netloader/server.h"
#include "netloader/src/base/clock.h"
#include "netloader/src/protocol/wire.h"
#include "server/relay_state.h"
#include "server/ring_pool.h"
#include "server/stream.h"
#include "transfer/transport.h"

namespace netloader::serving {

// A session id as clients see it: 16 hex digits.
std::string HexId(uint64_t id);

// One admitted client. Its thread accepts the client's MPI connection, streams the chunks of each
// Request as it comes, and awaits the client's verdict (Done); then it records its outcome
// (served(), bytes_sent()) and sets finished().
// Threads: the control thread makes it, calls Start once, feeds the mailbox (Post, Conclude,
// GiveUp, Abort, Heard) and reads the state (aborted, finished, last_heard_ms); only once
// finished() or after Abort does it Join, then read the outcome. The session's own thread runs
// everything else.
class Session {
 public:
  // `serve_endpoint`: where the client serves while it loads (Register.serve_endpoint), a relay
  // newcomers may be redirected to; empty when it does not serve. `generation`: the content
  // generation `stream` belongs to (RelayState).
  Session(uint64_t id, std::string client, std::shared_ptr<const Stream> stream,
          uint64_t generation, std::string serve_endpoint,
          std::unique_ptr<transfer::Listener> listener);
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  uint64_t id() const { return id_; }
  const std::string& client() const { return client_; }
  const Stream& stream() const { return *stream_; }
  const std::string& serve_endpoint() const { return serve_endpoint_; }
  // The MPI port the client connects to (Accept.mpi_port).
  const std::string& port() const { return listener_->address(); }
  std::string rendezvous() const { return listener_->rendezvous(); }

  // Starts the session's thread. `relay`: set on a relay, whose chunks are each sent only once
  // its own load verified them. `options`, `rings` and `relay` must outlive the thread.
  void Start(const ServerOptions& options, RingPool& rings, RelayState* relay);
  // Waits for the thread to exit: once finished(), or soon after Abort.
  void Join() { thread_.join(); }

  // The chunks of one Request (checked against the stream), to stream after the earlier ones.
  void Post(std::vector<size_t> chunks);
  // The client's Done. One that is not verified also aborts the stream: a client that gave up
  // must not leave the session waiting on its connect or its receives.
  void Conclude(const wire::Done& done);
  // Aborts the session because the control thread gave up on the client (`why`, for its log).
  void GiveUp(std::string why);
  // Aborts the session (the server stops).
  void Abort();
  // The client was heard from now (a Heartbeat or Request).
  void Heard() { last_heard_ms_ = NowMs(); }

  int64_t last_heard_ms() const { return last_heard_ms_.load(); }
  bool aborted() const { return abort_.load(); }
  // The thread is about to exit: join it and free the slot.
  bool finished() const { return finished_.load(); }
  // The outcome; read after Join.
  bool served() const { return served_; }
  uint64_t bytes_sent() const { return bytes_sent_; }

 private:
  // What the streaming of Requests ended with.
  struct Streamed {
    Status status = Status::Ok();
    uint64_t sent = 0;    // bytes
    size_t requests = 0;  // Requests streamed
    std::optional<wire::Done> done;
    bool aborted = false;
  };

  void Serve(const ServerOptions& options, RingPool& rings, RelayState* relay);
  Streamed StreamRequests(transfer::Channel& channel, const ServerOptions& options,
                          StagingRing* ring, RelayState* relay);
  // Until a Request or the Done is queued, the session is aborted, or nothing was heard from
  // the client for `done_timeout`. Called with mu_ held (through `lock`).
  void WaitForRequestOrDone(std::unique_lock<std::mutex>& lock,
                            std::chrono::milliseconds done_timeout);
  void Report(const std::string& who, std::unique_ptr<transfer::Channel>& channel,
              Streamed streamed, double seconds, const ServerOptions& options);
  // Why the stream stopped with `status`, for a person: the client's own reason, or why the
  // control thread gave up on it, when that cancelled it.
  std::string DescribeAbort(const Status& status);
  // The thread's last act: its outcome, which the control thread counts when it retires it.
  void Finish(bool served, uint64_t bytes);

  const uint64_t id_;
  const std::string client_;
  const std::shared_ptr<const Stream> stream_;
  const uint64_t generation_;
  const std::string serve_endpoint_;
  const std::unique_ptr<transfer::Listener> listener_;
  std::thread thread_;

  std::atomic<bool> abort_{false};     // set by Abort, GiveUp or an unverified Done
  std::atomic<bool> finished_{false};  // set last by the session's thread
  // The outcome, written by the session's thread before finished_, read after joining it.
  bool served_ = false;
  uint64_t bytes_sent_ = 0;
  std::atomic<int64_t> last_heard_ms_{NowMs()};  // the client's last heartbeat (or Register)

  std::mutex mu_;  // guards requests_, done_ and lost_
  std::condition_variable cv_;
  std::deque<std::vector<size_t>> requests_;  // the chunks of each Request not yet streamed
  std::optional<wire::Done> done_;
  std::string lost_;  // why the control thread gave up on the client
};

}  // namespace netloader::serving
