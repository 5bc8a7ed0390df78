#include "netloader/src/stream/manifest.h"

#include <map>
#include <memory>
#include <tuple>

#include "netloader/fingerprint.h"
#include "netloader/src/base/xxh3.h"

namespace netloader {
Manifest BuildManifest(const ModelView& model, uint64_t chunk_bytes) {
  Manifest manifest;
  manifest.table_digest = TableDigest(model);
  manifest.chunk_bytes = chunk_bytes;
  // Zero-byte tensors belong to no chunk: their digest is that of no bytes.
  manifest.tensor_digests.assign(model.tensors.size(), XXH3_64bits(nullptr, 0));
  const ChunkPlan plan = ChunkPlan::Make(TensorSizes(model), chunk_bytes);
  // One pass over memory feeding two digests: the chunk's and the current tensor's. Pieces come
  // in storage order, so each tensor's bytes are contiguous in the walk.
  Xxh3State chunk_state(XXH3_createState());
  Xxh3State tensor_state(XXH3_createState());
  for (size_t c = 0; c < plan.size(); ++c) {
    XXH3_64bits_reset(chunk_state.get());
    for (size_t p = 0; p < plan.piece_count(c); ++p) {
      const ChunkPiece& piece = plan.pieces(c)[p];
      const char* data = static_cast<const char*>(model.tensors[piece.tensor].data) + piece.offset;
      XXH3_64bits_update(chunk_state.get(), data, piece.length);
      if (piece.offset == 0) XXH3_64bits_reset(tensor_state.get());
      XXH3_64bits_update(tensor_state.get(), data, piece.length);
      if (piece.offset + piece.length == model.tensors[piece.tensor].size_bytes) {
        manifest.tensor_digests[piece.tensor] = XXH3_64bits_digest(tensor_state.get());
      }
    }
    manifest.chunk_digests.push_back(XXH3_64bits_digest(chunk_state.get()));
  }
  manifest.model_digest = DigestOfDigests(manifest.chunk_digests);
  return manifest;
}

Manifest SubsetManifest(const ModelView& model, const Manifest& whole,
                        const std::vector<size_t>& subset) {
  ModelView view;
  for (size_t i : subset) view.tensors.push_back(model.tensors[i]);
  Manifest manifest;
  manifest.table_digest = TableDigest(view);
  manifest.chunk_bytes = whole.chunk_bytes;
  for (size_t i : subset) manifest.tensor_digests.push_back(whole.tensor_digests[i]);
  // The whole stream's chunks that are one piece of one tensor, by (tensor, offset, length).
  std::map<std::tuple<size_t, uint64_t, uint64_t>, uint64_t> single;
  const ChunkPlan whole_plan = ChunkPlan::Make(TensorSizes(model), whole.chunk_bytes);
  for (size_t c = 0; c < whole_plan.size(); ++c) {
    if (whole_plan.piece_count(c) != 1) continue;
    const ChunkPiece& piece = whole_plan.pieces(c)[0];
    single[{piece.tensor, piece.offset, piece.length}] = whole.chunk_digests[c];
  }
  const ChunkPlan plan = ChunkPlan::Make(TensorSizes(view), whole.chunk_bytes);
  const transfer::ChunkList spans = plan.Spans(view);
  for (size_t c = 0; c < plan.size(); ++c) {
    const ChunkPiece& first = plan.pieces(c)[0];
    const size_t tensor = subset[first.tensor];
    if (plan.piece_count(c) == 1 && first.offset == 0 &&
        first.length == model.tensors[tensor].size_bytes) {
      manifest.chunk_digests.push_back(whole.tensor_digests[tensor]);
      continue;
    }
    auto known =
        plan.piece_count(c) == 1 ? single.find({tensor, first.offset, first.length}) : single.end();
    manifest.chunk_digests.push_back(known != single.end() ? known->second : ChunkDigest(spans, c));
  }
  manifest.model_digest = DigestOfDigests(manifest.chunk_digests);
  return manifest;
}

}  // namespace netloader
