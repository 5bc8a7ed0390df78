#include "netloader/src/manifest.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <memory>

namespace netloader {
namespace {

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? "," : "") + std::to_string(shape[i]);
  return text + "]";
}

std::string Describe(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                     uint64_t size) {
  return "'" + name + "' " + std::string(DTypeName(dtype)) + " " + ShapeText(shape) + " " +
         std::to_string(size) + " B";
}

struct StateDeleter {
  void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
};
using State = std::unique_ptr<XXH3_state_t, StateDeleter>;

}  // namespace

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
  State state(XXH3_createState());
  XXH3_64bits_reset(state.get());
  for (size_t s = 0; s < n; ++s) XXH3_64bits_update(state.get(), spans[s].data, spans[s].size);
  return XXH3_64bits_digest(state.get());
}

uint64_t CopyAndDigest(const char* staged, const transfer::Span* spans, size_t span_count,
                       bool hash) {
  constexpr size_t kBlock = 128 << 10;  // fits L2 with room: hash and copy read it from cache
  State state(hash ? XXH3_createState() : nullptr);
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

Manifest BuildManifest(const ModelView& model, uint64_t chunk_bytes) {
  Manifest manifest;
  manifest.chunk_bytes = chunk_bytes;
  for (const TensorView& t : model.tensors) {
    manifest.tensors.push_back({t.name, t.dtype, t.shape, t.size_bytes, 0});
  }
  const ChunkPlan plan = ChunkPlan::Make(TensorSizes(model), chunk_bytes);
  // One pass over memory feeding two digests: the chunk's and the current tensor's. Pieces come
  // in storage order, so each tensor's bytes are contiguous in the walk.
  State chunk_state(XXH3_createState());
  State tensor_state(XXH3_createState());
  std::vector<bool> tensor_started(model.tensors.size(), false);
  for (size_t c = 0; c < plan.size(); ++c) {
    XXH3_64bits_reset(chunk_state.get());
    for (size_t p = 0; p < plan.piece_count(c); ++p) {
      const ChunkPiece& piece = plan.pieces(c)[p];
      const char* data = static_cast<const char*>(model.tensors[piece.tensor].data) + piece.offset;
      XXH3_64bits_update(chunk_state.get(), data, piece.length);
      if (piece.offset == 0) XXH3_64bits_reset(tensor_state.get());
      XXH3_64bits_update(tensor_state.get(), data, piece.length);
      if (piece.offset + piece.length == model.tensors[piece.tensor].size_bytes) {
        manifest.tensors[piece.tensor].digest = XXH3_64bits_digest(tensor_state.get());
        tensor_started[piece.tensor] = true;
      }
    }
    manifest.chunk_digests.push_back(XXH3_64bits_digest(chunk_state.get()));
  }
  for (size_t i = 0; i < model.tensors.size(); ++i) {
    if (!tensor_started[i]) manifest.tensors[i].digest = XXH3_64bits(nullptr, 0);
  }
  manifest.model_digest = DigestOfDigests(manifest.chunk_digests);
  return manifest;
}

std::vector<std::string> CompareLayout(const Manifest& manifest, const ModelView& expected,
                                       size_t limit) {
  std::vector<std::string> diffs;
  size_t more = 0;
  auto add = [&](std::string line) {
    if (diffs.size() < limit) {
      diffs.push_back(std::move(line));
    } else {
      ++more;
    }
  };
  if (manifest.tensors.size() != expected.tensors.size()) {
    add("tensor count: server " + std::to_string(manifest.tensors.size()) + ", client " +
        std::to_string(expected.tensors.size()));
  }
  const size_t n = std::min(manifest.tensors.size(), expected.tensors.size());
  for (size_t i = 0; i < n; ++i) {
    const TensorEntry& s = manifest.tensors[i];
    const TensorView& c = expected.tensors[i];
    if (s.name != c.name || s.dtype != c.dtype || s.shape != c.shape ||
        s.size_bytes != c.size_bytes) {
      add("tensor " + std::to_string(i) + ": server " +
          Describe(s.name, s.dtype, s.shape, s.size_bytes) + ", client " +
          Describe(c.name, c.dtype, c.shape, c.size_bytes));
    }
  }
  if (more) diffs.push_back("... and " + std::to_string(more) + " more differences");
  return diffs;
}

}  // namespace netloader
