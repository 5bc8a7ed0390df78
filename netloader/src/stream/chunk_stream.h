#pragma once

// A model's bytes as a stream of chunks (PROTOCOL.md, section 6): how they are cut (ChunkPlan),
// the spans of memory each covers, the staging of chunks that are several spans, their digests,
// and the two ends of a stream: SendPlan, which a server drives, and ReceivePlan, which a client
// drives. The data plane underneath is any transfer::Channel.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "netloader/limits.h"
#include "netloader/status.h"
#include "netloader/tensor.h"
#include "transfer/chunk_list.h"
#include "transfer/transport.h"

namespace netloader {

// A piece of one tensor that belongs to one chunk.
struct ChunkPiece {
  uint32_t tensor = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// How a model's bytes are cut into messages. Tensors of chunk_bytes or more are split into
// chunk_bytes slices; runs of smaller tensors are coalesced into chunks of at most chunk_bytes;
// zero-byte tensors carry no data. Both sides compute it from the tensor sizes alone.
class ChunkPlan {
 public:
  static ChunkPlan Make(const std::vector<uint64_t>& tensor_sizes, uint64_t chunk_bytes);

  size_t size() const { return starts_.size(); }
  const ChunkPiece* pieces(size_t chunk) const { return pieces_.data() + starts_[chunk]; }
  size_t piece_count(size_t chunk) const {
    return (chunk + 1 < starts_.size() ? starts_[chunk + 1] : pieces_.size()) - starts_[chunk];
  }
  // The chunks as memory spans over `model`'s tensors.
  transfer::ChunkList Spans(const ModelView& model) const;
  // "name[, name...]" of the tensors a chunk touches, for error messages.
  std::string TensorNames(size_t chunk, const ModelView& model) const;

 private:
  std::vector<ChunkPiece> pieces_;
  std::vector<size_t> starts_;
};

std::vector<uint64_t> TensorSizes(const ModelView& model);

// XXH3-64 over one chunk's spans, in order.
uint64_t ChunkDigest(const transfer::ChunkList& chunks, size_t chunk);

// Copies `bytes` bytes from `staged` into the spans in order while hashing them (XXH3-64, as
// ChunkDigest would), in cache-sized blocks so each byte is read once from cache. Returns the
// digest, or 0 without hashing when `hash` is false.
uint64_t CopyAndDigest(const char* staged, const transfer::Span* spans, size_t span_count,
                       bool hash);

// XXH3-64 over a list of digests, each as 8 bytes little-endian (the whole-model digest).
uint64_t DigestOfDigests(const std::vector<uint64_t>& digests);

// Byte ranges of a model's stream (its tensors' bytes concatenated in storage order, which the
// chunks cut in order) merged into disjoint intervals: what a client holds verified, kept across
// sources so that a load resumes where a failed source stopped.
class ByteRanges {
 public:
  void Add(uint64_t begin, uint64_t end);
  bool Covers(uint64_t begin, uint64_t end) const;
  // Whether any byte of [begin, end) is in a range.
  bool Intersects(uint64_t begin, uint64_t end) const;
  void Remove(uint64_t begin, uint64_t end);
  uint64_t bytes() const;
  void Clear() { ranges_.clear(); }
  // Calls f(begin, end) for each range, in order.
  template <typename F>
  void ForEach(F f) const {
    for (const auto& [begin, end] : ranges_) f(begin, end);
  }

 private:
  std::map<uint64_t, uint64_t> ranges_;  // begin -> end; disjoint and not touching
};

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
  bool Holds(size_t chunk) const { return ChunkDigest(chunks_, chunk) == chunk_digests_[chunk]; }

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
