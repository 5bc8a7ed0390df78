#include "netloader/src/staging.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "netloader/src/host_memory.h"

namespace netloader {

StagingRing::~StagingRing() { UnmapHostMemory(data_, slots_ * slot_bytes_); }

Status StagingRing::Allocate(size_t slots, size_t slot_bytes) {
  const size_t bytes = slots * slot_bytes;
  void* memory = MapHostMemory(bytes);
  if (memory == nullptr) {
    return Status(StatusCode::kUnavailable,
                  "cannot allocate a " + std::to_string(bytes) + "-byte staging ring");
  }
  data_ = static_cast<char*>(memory);
  slots_ = slots;
  slot_bytes_ = slot_bytes;
  return Status::Ok();
}

transfer::ChunkList StagedMultiSpanChunks(const transfer::ChunkList& chunks,
                                          const StagingRing& ring) {
  transfer::ChunkList staged;
  for (size_t i = 0; i < chunks.size(); ++i) {
    staged.BeginChunk();
    if (chunks.span_count(i) == 1) {
      staged.AddSpan(chunks.spans(i)[0].data, chunks.spans(i)[0].size);
    } else {
      staged.AddSpan(ring.slot(i), chunks.bytes(i));
    }
  }
  return staged;
}

uint64_t LargestChunk(const transfer::ChunkList& chunks, bool multi_span_only) {
  uint64_t largest = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (!multi_span_only || chunks.span_count(i) > 1) largest = std::max(largest, chunks.bytes(i));
  }
  return largest;
}

void GatherChunk(const transfer::ChunkList& chunks, size_t i, char* out) {
  for (size_t s = 0; s < chunks.span_count(i); ++s) {
    std::memcpy(out, chunks.spans(i)[s].data, chunks.spans(i)[s].size);
    out += chunks.spans(i)[s].size;
  }
}

}  // namespace netloader
