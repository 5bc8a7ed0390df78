#pragma once

#include <cstdint>
#include <string>

#include "netloader/status.h"

namespace netloader::examples {

struct CheckpointSpec {
  uint64_t total_bytes = 256ull << 20;  // approximate data size
  int tensors = 256;                    // at least 4
  int shards = 1;                       // > 1 writes model-0000K-of-0000N files + index.json
  uint64_t seed = 1;                    // same seed, same bytes
};

// Writes a Llama-named checkpoint of every safetensors dtype into directory `dir`: a zero-byte
// tensor, a scalar, an embedding of ~1/8 of the bytes (larger than any default chunk), and
// many tensors of mixed sizes, ranks and dtypes filled with seeded pseudo-random bytes.
Status GenerateCheckpoint(const std::string& dir, const CheckpointSpec& spec);

}  // namespace netloader::examples
