#pragma once

// The counters a host polls (ServerStats), kept in one place.

#include <mutex>

#include "netloader/server.h"

namespace netloader::serving {

// ServerStats, changed one locked update at a time, so that a reader never sees half of one
// (a retired session counted as done and still open). Thread-safe: the control thread, the
// session threads (staging rings) and the host's stats() all use it.
class StatsCounter {
 public:
  ServerStats Get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }
  // Runs `update(ServerStats&)` under the lock.
  template <typename F>
  void Update(F update) {
    std::lock_guard<std::mutex> lock(mu_);
    update(stats_);
  }

 private:
  mutable std::mutex mu_;  // guards stats_
  ServerStats stats_;
};

}  // namespace netloader::serving
