#pragma once

// The checkpoints a bench measures: generated ones, and what the rows need to know about or
// derive from a checkpoint on disk. Every function dies (fatal.h) when a file cannot be read or
// written.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace netloader::bench {

// Writes a generated Llama-named checkpoint of about `total_bytes` in `tensors` tensors into
// directory `path` (examples/checkpoint_gen.h); `seed` decides its bytes.
void GenerateModel(const std::string& path, uint64_t total_bytes, int tensors, uint64_t seed = 1);

// The model to measure: `checkpoint` when one was given (--checkpoint), else one generated at
// `path` as GenerateModel does.
std::string PrepareModel(const std::string& checkpoint, const std::string& path,
                         uint64_t total_bytes, int tensors, uint64_t seed);

// The tensor bytes of the checkpoint at `path`; with `ranges`, each tensor's (file offset, size)
// appended in storage order.
uint64_t FileDataBytes(const std::string& path,
                       std::vector<std::pair<uint64_t, uint64_t>>* ranges = nullptr);

// A pipeline stage's share of `model`: one pattern per even-numbered layer
// ("model.layers.N.*"), or every tensor ("*") when it has no such names.
std::vector<std::string> EvenLayers(const std::string& model);

// `model`'s files copied to directory `older` (emptied first), one byte changed in every 50th
// `chunk_bytes` of the tensor stream: about 2 % of the chunks differ (one change in a model of
// fewer than 50 chunks). Returns `older`.
std::string MakeOlderCopy(const std::string& model, const std::string& older, uint64_t chunk_bytes);

}  // namespace netloader::bench
