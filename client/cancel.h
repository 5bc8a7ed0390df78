#pragma once

// Cancellation of a load (ClientOptions::cancel), looked at by every wait of the client.

#include <atomic>
#include <chrono>

#include "netloader/status.h"

namespace netloader::internal {

// How often a waiting load looks at ClientOptions::cancel.
inline constexpr std::chrono::milliseconds kCancelCheck{50};

inline bool IsCancelled(const std::atomic<bool>* cancel) {
  return cancel != nullptr && cancel->load();
}

inline Status CancelledStatus() { return Status(StatusCode::kCancelled, "the load was cancelled"); }

}  // namespace netloader::internal
