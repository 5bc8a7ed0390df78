#pragma once

// How a model's bytes are cut into the chunks of its stream (PROTOCOL.md, section 6.2), the
// memory spans each chunk covers, and their digests (section 6.1).

#include <cstdint>
#include <string>
#include <vector>

#include "netloader/tensor.h"
#include "transfer/chunk_list.h"

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

}  // namespace netloader
