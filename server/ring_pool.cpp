#include "server/ring_pool.h"

namespace netloader::serving {

Result<std::unique_ptr<StagingRing>> RingPool::Take(size_t slots, uint64_t slot_bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if ((*it)->slots() < slots || (*it)->slot_bytes() < slot_bytes) continue;
      std::unique_ptr<StagingRing> ring = std::move(*it);
      free_.erase(it);
      return ring;
    }
  }
  // Allocated outside the lock: faulting a ring in takes a while, and other sessions may be
  // taking or returning theirs.
  auto ring = std::make_unique<StagingRing>();
  Status made = ring->Allocate(slots, slot_bytes);
  if (!made.ok()) return made;
  stats_.Update([&](ServerStats& s) { s.staging_bytes += ring->bytes(); });
  return ring;
}

void RingPool::Return(std::unique_ptr<StagingRing> ring) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(std::move(ring));
}

}  // namespace netloader::serving
