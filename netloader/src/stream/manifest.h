#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "netloader/src/stream/chunk_stream.h"
#include "netloader/tensor.h"

namespace netloader {

// What a server sends in Accept: how the model is chunked, and content digests.
struct Manifest {
  std::string table_digest;              // the served table's Fingerprint::table_digest
  std::vector<uint64_t> tensor_digests;  // XXH3-64 per tensor, storage order
  uint64_t chunk_bytes = 0;
  std::vector<uint64_t> chunk_digests;  // XXH3-64 per chunk, stream order
  uint64_t model_digest = 0;            // XXH3-64 over chunk_digests
};

// Computes every tensor and chunk digest of `model` in one pass over its memory, and its table
// digest.
Manifest BuildManifest(const ModelView& model, uint64_t chunk_bytes);

// The manifest of a partial load's stream: `model`'s tensors `subset`, in that order, cut at
// `whole`'s chunk size, given `whole` (BuildManifest of all of `model`). Digests the two streams
// share are reused: a chunk that is one whole tensor, or the same slice of a large tensor. Only
// chunks that coalesce small tensors differently are hashed again.
Manifest SubsetManifest(const ModelView& model, const Manifest& whole,
                        const std::vector<size_t>& subset);

}  // namespace netloader
