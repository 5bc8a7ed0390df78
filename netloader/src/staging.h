#pragma once

#include <cstddef>

#include "netloader/status.h"
#include "transfer/chunk_list.h"

namespace netloader {

// A small reused buffer of `slots` chunk-sized slots that messages are staged through: chunk i
// uses slot i % slots. Pre-faulted anonymous memory, unmapped on destruction. Not thread-safe.
class StagingRing {
 public:
  StagingRing() = default;
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;
  ~StagingRing();

  Status Allocate(size_t slots, size_t slot_bytes);
  char* slot(size_t chunk) const { return data_ + (chunk % slots_) * slot_bytes_; }
  // Gives up the memory without unmapping it: after a failed stream a cancelled receive may
  // still write into it, and writing into unmapped memory would crash the host.
  void Leak() { data_ = nullptr; }

 private:
  char* data_ = nullptr;
  size_t slots_ = 0;
  size_t slot_bytes_ = 0;
};

// `chunks` with each multi-span chunk replaced by its ring slot; single-span chunks (slices of
// large tensors) keep pointing at their own memory, so they still travel without a copy.
transfer::ChunkList StagedMultiSpanChunks(const transfer::ChunkList& chunks,
                                          const StagingRing& ring);

// The size of the largest chunk of `chunks`; with `multi_span_only`, of those with several spans.
uint64_t LargestChunk(const transfer::ChunkList& chunks, bool multi_span_only = false);

// Copies chunk i's spans, in order, to `out`.
void GatherChunk(const transfer::ChunkList& chunks, size_t i, char* out);

}  // namespace netloader
