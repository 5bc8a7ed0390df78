#include "tests/bench/checkpoints.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "examples/checkpoint_gen.h"
#include "netloader/safetensors.h"
#include "tests/bench/fatal.h"

namespace netloader::bench {

void GenerateModel(const std::string& path, uint64_t total_bytes, int tensors, uint64_t seed) {
  examples::CheckpointSpec spec;
  spec.total_bytes = total_bytes;
  spec.tensors = tensors;
  spec.seed = seed;
  Check(examples::GenerateCheckpoint(path, spec), "generate");
}

std::string PrepareModel(const std::string& checkpoint, const std::string& path,
                         uint64_t total_bytes, int tensors, uint64_t seed) {
  if (!checkpoint.empty()) return checkpoint;
  GenerateModel(path, total_bytes, tensors, seed);
  return path;
}

uint64_t FileDataBytes(const std::string& path,
                       std::vector<std::pair<uint64_t, uint64_t>>* ranges) {
  auto layout = Check(ReadCheckpointLayout(path), path);
  uint64_t total = 0;
  for (const auto& shard : layout.shards) {
    for (const auto& t : shard.tensors) {
      if (ranges) ranges->push_back({t.file_offset, t.size_bytes});
      total += t.size_bytes;
    }
  }
  return total;
}

std::vector<std::string> EvenLayers(const std::string& model) {
  std::set<std::string> patterns;
  const std::string prefix = "model.layers.";
  for (const auto& shard : Check(ReadCheckpointLayout(model), model).shards) {
    for (const auto& t : shard.tensors) {
      if (t.name.rfind(prefix, 0) != 0) continue;
      const size_t dot = t.name.find('.', prefix.size());
      const std::string layer = t.name.substr(prefix.size(), dot - prefix.size());
      if (!layer.empty() && (layer.back() - '0') % 2 == 0) {
        patterns.insert(prefix + layer + ".*");
      }
    }
  }
  if (patterns.empty()) return {"*"};
  return {patterns.begin(), patterns.end()};
}

namespace {

// The shard files, and the index of a sharded checkpoint, copied as they are.
void CopyFiles(const std::string& model, const CheckpointLayout& layout, const std::string& older) {
  for (const auto& shard : layout.shards) {
    std::filesystem::copy_file(shard.path,
                               older + "/" + std::filesystem::path(shard.path).filename().string());
  }
  if (layout.indexed && std::filesystem::is_directory(model)) {
    for (const auto& entry : std::filesystem::directory_iterator(model)) {
      if (entry.path().string().find(".index.json") != std::string::npos) {
        std::filesystem::copy_file(entry.path(), older + "/" + entry.path().filename().string());
      }
    }
  }
}

}  // namespace

// The changes are placed by offset in the tensor stream (what the chunks are cut from), not in
// the files, so that they fall on every 50th chunk whatever the shards' headers are.
std::string MakeOlderCopy(const std::string& model, const std::string& older,
                          uint64_t chunk_bytes) {
  std::filesystem::remove_all(older);
  std::filesystem::create_directories(older);
  auto layout = Check(ReadCheckpointLayout(model), model);
  CopyFiles(model, layout, older);
  const uint64_t step = 50 * chunk_bytes;
  const uint64_t total = layout.total_bytes();
  uint64_t stream = 0, next = std::min(step, total) / 2;  // a small model: one change
  for (const auto& shard : layout.shards) {
    std::fstream file(older + "/" + std::filesystem::path(shard.path).filename().string(),
                      std::ios::in | std::ios::out | std::ios::binary);
    for (const auto& t : shard.tensors) {
      for (; next < stream + t.size_bytes; next += step) {
        const auto at = static_cast<std::streamoff>(t.file_offset + (next - stream));
        file.seekg(at);
        const char byte = static_cast<char>(file.get() ^ 0x5a);
        file.seekp(at);
        file.put(byte);
      }
      stream += t.size_bytes;
    }
  }
  return older;
}

}  // namespace netloader::bench
