#pragma once

// Cancellation of a load (ClientOptions::cancel), looked at by every wait of the client.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "netloader/status.h"

namespace netloader::internal {

// How often a waiting load looks at ClientOptions::cancel.
inline constexpr std::chrono::milliseconds kCancelCheck{50};

inline bool IsCancelled(const std::atomic<bool>* cancel) {
  return cancel != nullptr && cancel->load();
}

inline Status CancelledStatus() { return Status(StatusCode::kCancelled, "the load was cancelled"); }

// Sleeps until `until`, looking at `cancel` every kCancelCheck: false as soon as it is set.
inline bool SleepUnlessCancelled(const std::atomic<bool>* cancel,
                                 std::chrono::steady_clock::time_point until) {
  for (auto now = std::chrono::steady_clock::now(); now < until;
       now = std::chrono::steady_clock::now()) {
    if (IsCancelled(cancel)) return false;
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(kCancelCheck, until - now));
  }
  return true;
}

}  // namespace netloader::internal
