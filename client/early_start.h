#pragma once

// The data plane's start-up (MPI: ~140 ms), begun as early as it can be. With a shared
// rendezvous configured the client need not learn the rendezvous from its source, so it starts
// on a thread of its own while the client connects and registers, instead of after Accept.
// Wait may be called from any thread (the sources of a striped load wait together).

#include <future>
#include <mutex>

#include "netloader/transport.h"
#include "transfer/transport.h"

namespace netloader::internal {

class EarlyStart {
 public:
  EarlyStart(transfer::DataPlane& plane, const TransportOptions& options) {
    if (options.rendezvous_uri.empty() || !plane.bound_rendezvous().empty()) return;
    started_ = std::async(std::launch::async, [&plane] { (void)plane.Start(""); });
  }
  EarlyStart(const EarlyStart&) = delete;
  EarlyStart& operator=(const EarlyStart&) = delete;
  ~EarlyStart() { Wait(); }
  // Until the start-up begun here returned (bounded by TransportOptions::startup_timeout). Its
  // outcome is not kept: DataPlane::Start, called again, reports a failure again.
  void Wait() {
    std::lock_guard<std::mutex> lock(mu_);
    if (started_.valid()) started_.get();
  }

 private:
  std::mutex mu_;  // guards started_
  std::future<void> started_;
};

}  // namespace netloader::internal
