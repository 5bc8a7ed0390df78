#include "netloader/src/stream/chunk_plan.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "netloader/src/base/xxh3.h"

namespace netloader {
ChunkPlan ChunkPlan::Make(const std::vector<uint64_t>& sizes, uint64_t chunk_bytes) {
  ChunkPlan plan;
  uint64_t group_bytes = 0;
  bool group_open = false;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const uint64_t size = sizes[i];
    const auto tensor = static_cast<uint32_t>(i);
    if (size == 0) continue;
    if (size >= chunk_bytes) {
      group_open = false;
      for (uint64_t offset = 0; offset < size; offset += chunk_bytes) {
        plan.starts_.push_back(plan.pieces_.size());
        plan.pieces_.push_back({tensor, offset, std::min(chunk_bytes, size - offset)});
      }
      continue;
    }
    if (!group_open || group_bytes + size > chunk_bytes) {
      plan.starts_.push_back(plan.pieces_.size());
      group_bytes = 0;
      group_open = true;
    }
    plan.pieces_.push_back({tensor, 0, size});
    group_bytes += size;
  }
  return plan;
}

transfer::ChunkList ChunkPlan::Spans(const ModelView& model) const {
  transfer::ChunkList list;
  for (size_t c = 0; c < size(); ++c) {
    list.BeginChunk();
    for (size_t p = 0; p < piece_count(c); ++p) {
      const ChunkPiece& piece = pieces(c)[p];
      char* base = static_cast<char*>(model.tensors[piece.tensor].data);
      list.AddSpan(base + piece.offset, piece.length);
    }
  }
  return list;
}

std::string ChunkPlan::TensorNames(size_t chunk, const ModelView& model) const {
  std::string names;
  const size_t n = piece_count(chunk);
  for (size_t p = 0; p < n && p < 5; ++p) {
    const ChunkPiece& piece = pieces(chunk)[p];
    names += (p ? ", '" : "'") + model.tensors[piece.tensor].name + "'";
    if (piece.length != model.tensors[piece.tensor].size_bytes) {
      names += " bytes [" + std::to_string(piece.offset) + ", " +
               std::to_string(piece.offset + piece.length) + ")";
    }
  }
  if (n > 5) names += " and " + std::to_string(n - 5) + " more";
  return names;
}

std::vector<uint64_t> TensorSizes(const ModelView& model) {
  std::vector<uint64_t> sizes;
  sizes.reserve(model.tensors.size());
  for (const TensorView& t : model.tensors) sizes.push_back(t.size_bytes);
  return sizes;
}

uint64_t ChunkDigest(const transfer::ChunkList& chunks, size_t chunk) {
  const size_t n = chunks.span_count(chunk);
  const transfer::Span* spans = chunks.spans(chunk);
  if (n == 1) return XXH3_64bits(spans[0].data, spans[0].size);
  Xxh3State state(XXH3_createState());
  XXH3_64bits_reset(state.get());
  for (size_t s = 0; s < n; ++s) XXH3_64bits_update(state.get(), spans[s].data, spans[s].size);
  return XXH3_64bits_digest(state.get());
}

uint64_t CopyAndDigest(const char* staged, const transfer::Span* spans, size_t span_count,
                       bool hash) {
  constexpr size_t kBlock = 128 << 10;  // fits L2 with room: hash and copy read it from cache
  Xxh3State state(hash ? XXH3_createState() : nullptr);
  if (hash) XXH3_64bits_reset(state.get());
  for (size_t s = 0; s < span_count; ++s) {
    char* out = static_cast<char*>(spans[s].data);
    for (size_t done = 0; done < spans[s].size;) {
      const size_t n = std::min(kBlock, spans[s].size - done);
      if (hash) XXH3_64bits_update(state.get(), staged, n);
      std::memcpy(out + done, staged, n);
      staged += n;
      done += n;
    }
  }
  return hash ? XXH3_64bits_digest(state.get()) : 0;
}

uint64_t DigestOfDigests(const std::vector<uint64_t>& digests) {
  std::vector<unsigned char> bytes(digests.size() * 8);
  for (size_t i = 0; i < digests.size(); ++i) {
    for (int b = 0; b < 8; ++b)
      bytes[i * 8 + b] = static_cast<unsigned char>(digests[i] >> (8 * b));
  }
  return XXH3_64bits(bytes.data(), bytes.size());
}

}  // namespace netloader
