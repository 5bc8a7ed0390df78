#pragma once

// The two ends of a model's stream of chunks (PROTOCOL.md, section 6): SendPlan, which a server
// drives, and ReceivePlan, which a client drives, with the staging ring that chunks of several
// spans pass through. How the chunks are cut is chunk_plan.h; what a client holds, byte_ranges.h.
// The data plane underneath is any transfer::Channel.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "netloader/limits.h"
#include "netloader/src/stream/byte_ranges.h"
#include "netloader/src/stream/chunk_plan.h"
#include "netloader/status.h"
#include "netloader/tensor.h"
#include "transfer/chunk_list.h"
#include "transfer/transport.h"

namespace netloader {

// A small reused buffer of `slots` chunk-sized slots that messages are staged through: chunk i
// uses slot i % slots. Pre-faulted huge-page memory (host_memory.h), unmapped on destruction.
// Not thread-safe.
class StagingRing {
 public:
  StagingRing() = default;
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;
  ~StagingRing();

  Status Allocate(size_t slots, size_t slot_bytes);
  size_t bytes() const { return slots_ * slot_bytes_; }
  size_t slots() const { return slots_; }
  size_t slot_bytes() const { return slot_bytes_; }
  char* slot(size_t chunk) const { return data_ + (chunk % slots_) * slot_bytes_; }
  // Gives up the memory without unmapping it: after a failed stream a cancelled receive may
  // still write into it, and writing into unmapped memory would crash the host.
  void Leak() { data_ = nullptr; }

 private:
  char* data_ = nullptr;
  size_t slots_ = 0;
  size_t slot_bytes_ = 0;
};

// The sending end: a model's chunks over its live tensors, cut once. Thread-safe for Send from
// several threads at once, each with its own ring.
class SendPlan {
 public:
  SendPlan(const ModelView& model, uint64_t chunk_bytes);

  size_t size() const { return chunks_.size(); }
  uint64_t bytes(size_t chunk) const { return chunks_.bytes(chunk); }
  // The chunk's bytes in the model's stream: [begin, end).
  std::pair<uint64_t, uint64_t> range(size_t chunk) const {
    return {offsets_[chunk], offsets_[chunk] + chunks_.bytes(chunk)};
  }
  // Bytes of one staging slot: the largest chunk of several spans; 0 when every chunk is one
  // contiguous span (then Send needs no ring).
  uint64_t slot_bytes() const { return slot_bytes_; }

  // Sends the listed chunks in the order listed (PROTOCOL.md, section 4.5: a client's Request).
  // A chunk of several spans is gathered into its slot of `ring` (options.window slots of
  // slot_bytes()) just before it is posted: a memcpy from warm memory is cheaper than letting MPI
  // pack a many-block datatype. A chunk of one span is sent in place. `on_sent(chunk)` runs
  // after each chunk was sent. `ready(chunk)`, when given, runs before each chunk is posted and
  // may wait for its bytes to be there (a server over an instance still loading); a non-OK
  // status stops the stream.
  Status Send(transfer::Channel& channel, const transfer::StreamOptions& options, StagingRing* ring,
              const std::vector<size_t>& chunks, const std::function<void(size_t chunk)>& on_sent,
              const std::function<Status(size_t chunk)>& ready = nullptr) const;

 private:
  transfer::ChunkList chunks_;
  std::vector<uint64_t> offsets_;  // each chunk's first byte in the stream
  uint64_t slot_bytes_ = 0;
};

// How a receiving end checks and lands the chunks. The defaults are what a load uses; the others
// exist for measurement (the benchmark's --direct and --no-verify rows).
struct ReceiveOptions {
  // Land each chunk that coalesces several small tensors in a small reused ring (window x chunk
  // size), verify it there and copy it into place, instead of receiving it straight into the
  // spans (an MPI datatype scattering into many small tensors is slow: measured 19 % of raw MPI
  // over TCP, BENCHMARKS.md). Chunks of one contiguous span always land in place.
  bool staged = true;
  // Check every chunk's digest; false only for measurement (nothing is then verified).
  bool verify = true;
};

// The receiving end: a destination's chunks for a source's digests.
class ReceivePlan {
 public:
  // Errors: ProtocolMismatch when `chunk_digests` lists another number of chunks than the
  // destination's plan at `chunk_bytes` has, or `model_digest` is not their digest.
  static Result<ReceivePlan> Make(const ModelView& destination, uint64_t chunk_bytes,
                                  std::vector<uint64_t> chunk_digests, uint64_t model_digest);

  size_t size() const { return chunks_.size(); }
  // The chunk's bytes in the model's stream: [begin, end).
  std::pair<uint64_t, uint64_t> range(size_t chunk) const {
    return {offsets_[chunk], offsets_[chunk] + chunks_.bytes(chunk)};
  }
  // The chunks not wholly within `have`, in order.
  std::vector<size_t> Missing(const ByteRanges& have) const;
  // Whether the destination's bytes of `chunk` already match the source's digest.
  // Whether the destination holds the chunk's bytes already (a delta or resumed load). Pages of
  // a file-backed destination are dropped from this process once hashed.
  bool Holds(size_t chunk) const;

  // Receives the listed chunks, in the order listed, into the destination, checking each
  // against its digest as it arrives. `on_verified(chunk)` runs after each chunk checked out.
  // Errors: ChecksumMismatch naming the chunk and its tensors (failed_chunk() then says which),
  // the channel's errors, Unavailable (a staging ring could not be allocated).
  Status Receive(transfer::Channel& channel, const transfer::StreamOptions& stream,
                 const ReceiveOptions& options, const std::vector<size_t>& chunks,
                 const std::function<void(size_t chunk)>& on_verified);
  int64_t failed_chunk() const { return failed_chunk_; }
  // Bytes of every chunk whose receive was posted, over every Receive: received, or in flight
  // when a stream stopped. An upper bound of what crossed the wire.
  uint64_t posted_bytes() const { return posted_bytes_; }

 private:
  ReceivePlan() = default;

  const ModelView* destination_ = nullptr;
  ChunkPlan plan_;
  transfer::ChunkList chunks_;
  std::vector<uint64_t> offsets_;  // each chunk's first byte in the stream
  std::vector<uint64_t> chunk_digests_;
  int64_t failed_chunk_ = -1;
  uint64_t posted_bytes_ = 0;
  // Staging for chunks of several spans, allocated on first use and reused by every Receive;
  // given up (leaked) after a failed one, into which a cancelled receive may still write.
  std::unique_ptr<StagingRing> ring_;
};

}  // namespace netloader
