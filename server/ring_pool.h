#pragma once

// The staging rings the sessions send through, kept for reuse.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "netloader/src/stream/chunk_stream.h"
#include "netloader/status.h"
#include "server/stats.h"

namespace netloader::serving {

// Send rings (window slots of a stream's slot_bytes()), reused across sessions: allocating and
// faulting them in is not free. A ring is held by one session at a time; the pool only grows
// (ServerStats::staging_bytes counts what it allocated).
// Thread-safe: session threads take and return rings concurrently.
class RingPool {
 public:
  explicit RingPool(StatsCounter& stats) : stats_(stats) {}

  // A ring of at least `slots` slots of at least `slot_bytes`: a free one, or a new one.
  // Errors: those of StagingRing::Allocate.
  Result<std::unique_ptr<StagingRing>> Take(size_t slots, uint64_t slot_bytes);
  // Gives a ring taken here back for the next session.
  void Return(std::unique_ptr<StagingRing> ring);

 private:
  StatsCounter& stats_;
  std::mutex mu_;  // guards free_
  std::vector<std::unique_ptr<StagingRing>> free_;
};

}  // namespace netloader::serving
