#include "netloader/src/stream/chunk_stream.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "netloader/src/base/host_memory.h"
#include "netloader/src/metrics/metrics.h"

namespace netloader {
namespace {

// `chunks` with each chunk of several spans replaced by its ring slot; single-span chunks keep
// pointing at their own memory, so they still travel without a copy.
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

}  // namespace

StagingRing::~StagingRing() { UnmapHostMemory(data_, slots_ * slot_bytes_); }

Status StagingRing::Allocate(size_t slots, size_t slot_bytes) {
  const size_t bytes = slots * slot_bytes;
  // Shared, so that an MPI helper moves chunks straight into or out of it: a ring is small and
  // reused, so its 4 KiB pages cost nothing worth avoiding.
  void* memory = MapHostMemory(bytes, /*shared=*/true);
  if (memory == nullptr) {
    return Status(StatusCode::kUnavailable,
                  "cannot allocate a " + std::to_string(bytes) + "-byte staging ring");
  }
  data_ = static_cast<char*>(memory);
  slots_ = slots;
  slot_bytes_ = slot_bytes;
  return Status::Ok();
}

SendPlan::SendPlan(const ModelView& model, uint64_t chunk_bytes)
    : chunks_(ChunkPlan::Make(TensorSizes(model), chunk_bytes).Spans(model)),
      slot_bytes_(LargestChunk(chunks_, /*multi_span_only=*/true)) {
  offsets_.reserve(chunks_.size());
  uint64_t offset = 0;
  for (size_t c = 0; c < chunks_.size(); ++c) {
    offsets_.push_back(offset);
    offset += chunks_.bytes(c);
  }
}

Status SendPlan::Send(transfer::Channel& channel, const transfer::StreamOptions& options,
                      StagingRing* ring, const std::vector<size_t>& chunks,
                      const std::function<void(size_t chunk)>& on_sent,
                      const std::function<Status(size_t chunk)>& ready) const {
  const transfer::ChunkList selected = chunks_.Select(chunks);  // position p is chunks[p]
  transfer::StreamOptions stream = options;
  transfer::ChunkList staged;
  if (slot_bytes_ > 0) staged = StagedMultiSpanChunks(selected, *ring);
  if (slot_bytes_ > 0 || ready) {
    stream.prepare = [&](size_t p) {
      if (ready) {
        Status held = ready(chunks[p]);
        if (!held.ok()) return held;
      }
      if (slot_bytes_ > 0 && selected.span_count(p) > 1) GatherChunk(selected, p, ring->slot(p));
      return Status::Ok();
    };
  }
  return channel.Send(slot_bytes_ > 0 ? staged : selected, stream, [&](size_t p) {
    if (on_sent) on_sent(chunks[p]);
    return Status::Ok();
  });
}

Result<ReceivePlan> ReceivePlan::Make(const ModelView& destination, uint64_t chunk_bytes,
                                      std::vector<uint64_t> chunk_digests, uint64_t model_digest) {
  ReceivePlan plan;
  plan.destination_ = &destination;
  plan.plan_ = ChunkPlan::Make(TensorSizes(destination), chunk_bytes);
  if (plan.plan_.size() != chunk_digests.size()) {
    return Status(StatusCode::kProtocolMismatch, "the source lists " +
                                                     std::to_string(chunk_digests.size()) +
                                                     " chunk digests for a layout of " +
                                                     std::to_string(plan.plan_.size()) + " chunks");
  }
  // Each chunk is checked against its digest; this ties the digests to the model's.
  if (DigestOfDigests(chunk_digests) != model_digest) {
    return Status(StatusCode::kProtocolMismatch,
                  "the source's chunk digests do not add up to its whole-model digest");
  }
  plan.chunks_ = plan.plan_.Spans(destination);
  plan.offsets_.reserve(plan.chunks_.size());
  uint64_t offset = 0;
  for (size_t c = 0; c < plan.chunks_.size(); ++c) {
    plan.offsets_.push_back(offset);
    offset += plan.chunks_.bytes(c);
  }
  plan.chunk_digests_ = std::move(chunk_digests);
  return plan;
}

namespace {

// A file-backed destination's pages of `chunk`, dropped from this process (DropFileBackedPages)
// once the chunk is verified: what keeps a load into files (MappedCheckpoint) from holding the
// model in memory. Adjacent spans go in one call.
void DropWritten(const transfer::ChunkList& chunks, size_t chunk) {
  const transfer::Span* spans = chunks.spans(chunk);
  const size_t n = chunks.span_count(chunk);
  if (n == 0 || !IsFileBacked(spans[0].data)) return;
  const char* begin = static_cast<const char*>(spans[0].data);
  const char* end = begin + spans[0].size;
  for (size_t i = 1; i < n; ++i) {
    const char* at = static_cast<const char*>(spans[i].data);
    if (at != end) {
      DropFileBackedPages(begin, static_cast<size_t>(end - begin));
      begin = at;
      end = at;
    }
    end += spans[i].size;
  }
  DropFileBackedPages(begin, static_cast<size_t>(end - begin));
}

}  // namespace

bool ReceivePlan::Holds(size_t chunk) const {
  const bool same = ChunkDigest(chunks_, chunk) == chunk_digests_[chunk];
  DropWritten(chunks_, chunk);
  return same;
}

std::vector<size_t> ReceivePlan::Missing(const ByteRanges& have) const {
  std::vector<size_t> missing;
  for (size_t c = 0; c < size(); ++c) {
    const auto [begin, end] = range(c);
    if (!have.Covers(begin, end)) missing.push_back(c);
  }
  return missing;
}

Status ReceivePlan::Receive(transfer::Channel& channel, const transfer::StreamOptions& stream,
                            const ReceiveOptions& options, const std::vector<size_t>& chunks,
                            const std::function<void(size_t chunk)>& on_verified) {
  // What the data plane receives into: the destination itself, or for chunks of several spans a
  // ring of window slots (position p lands in slot p % window; the stream posts position
  // p + window only after position p's callback returned, so a slot is never overwritten before
  // it was copied out). A one-span chunk always lands in place.
  const transfer::ChunkList selected = chunks_.Select(chunks);  // position p is chunks[p]
  transfer::ChunkList staged;
  if (options.staged) {
    // No more slots than chunks can be in flight: a small model's one chunk needs one.
    const size_t slots = std::min(static_cast<size_t>(std::max(1, stream.window)), chunks_.size());
    const uint64_t slot_bytes = LargestChunk(chunks_, /*multi_span_only=*/true);
    if (!ring_ || ring_->bytes() < slots * slot_bytes) {
      auto ring = std::make_unique<StagingRing>();
      if (slot_bytes > 0) {
        Status made = ring->Allocate(slots, slot_bytes);
        if (!made.ok()) return made;
      }
      ring_ = std::move(ring);
    }
    staged = StagedMultiSpanChunks(selected, *ring_);
  }
  const transfer::ChunkList& wire_chunks = options.staged ? staged : selected;
  transfer::StreamOptions counted = stream;
  counted.prepare = [&](size_t p) {
    posted_bytes_ += selected.bytes(p);
    return stream.prepare ? stream.prepare(p) : Status::Ok();
  };
  Status status = channel.Receive(wire_chunks, counted, [&](size_t p) -> Status {
    const size_t c = chunks[p];
    uint64_t digest = chunk_digests_[c];
    if (wire_chunks.spans(p)[0].data != selected.spans(p)[0].data) {  // staged
      const auto* slot = static_cast<const char*>(wire_chunks.spans(p)[0].data);
      const uint64_t copied =
          CopyAndDigest(slot, selected.spans(p), selected.span_count(p), options.verify);
      if (options.verify) digest = copied;
    } else if (options.verify) {
      digest = ChunkDigest(selected, p);
    }
    if (digest != chunk_digests_[c]) {
      failed_chunk_ = static_cast<int64_t>(c);
      metrics::ChunkVerificationFailed();
      return Status(StatusCode::kChecksumMismatch, "chunk " + std::to_string(c) + " (" +
                                                       plan_.TensorNames(c, *destination_) +
                                                       ") does not match the source's digest");
    }
    DropWritten(selected, p);
    if (on_verified) on_verified(c);
    return Status::Ok();
  });
  if (!status.ok() && ring_) {
    ring_->Leak();  // a cancelled receive may still write into it
    ring_.reset();
  }
  return status;
}

}  // namespace netloader
