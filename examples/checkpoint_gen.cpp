#include "examples/checkpoint_gen.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "netloader/safetensors.h"

namespace netloader::examples {
namespace {

constexpr DType kAllDTypes[] = {DType::kBF16, DType::kF16,    DType::kF32,   DType::kF64,
                                DType::kI8,   DType::kI16,    DType::kI32,   DType::kI64,
                                DType::kU8,   DType::kU16,    DType::kU32,   DType::kU64,
                                DType::kBool, DType::kF8E4M3, DType::kF8E5M2};

uint64_t Next(uint64_t& state) {  // xorshift64*
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return state * 0x2545F4914F6CDD1DULL;
}

struct Planned {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t bytes;
};

std::vector<int64_t> ShapeFor(uint64_t elements, size_t index) {
  if (index % 7 == 3 && elements % 32 == 0 && elements >= 64) {
    return {2, static_cast<int64_t>(elements / 32), 16};
  }
  if (elements % 64 == 0 && elements >= 128) return {static_cast<int64_t>(elements / 64), 64};
  return {static_cast<int64_t>(elements)};
}

std::vector<Planned> Plan(const CheckpointSpec& spec) {
  std::vector<Planned> plan;
  uint64_t rng = spec.seed * 0x9E3779B97F4A7C15ULL + 1;
  plan.push_back({"model.zero_sized", DType::kF32, {0, 16}, 0});
  plan.push_back({"model.scale", DType::kF32, {}, 4});
  const uint64_t embed = std::max<uint64_t>(spec.total_bytes / 8 / 2 * 2, 2);
  plan.push_back(
      {"model.embed_tokens.weight", DType::kBF16, ShapeFor(embed / 2, 0), embed / 2 * 2});
  const int rest = std::max(1, spec.tensors - 3);
  const uint64_t budget = spec.total_bytes > embed ? spec.total_bytes - embed : 0;
  // Log-uniform weights over three decades give a few large and many small tensors.
  std::vector<double> weights(rest);
  double sum = 0;
  for (double& w : weights) {
    w = std::pow(10.0, 3.0 * (Next(rng) % 10000) / 10000.0);
    sum += w;
  }
  const char* kinds[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                         "mlp.down_proj",    "input_layernorm",  "post_attention_layernorm"};
  for (int i = 0; i < rest; ++i) {
    const DType dtype = kAllDTypes[i % 15];
    const size_t elem = DTypeSize(dtype);
    const uint64_t elements =
        std::max<uint64_t>(1, static_cast<uint64_t>(budget * weights[i] / sum) / elem);
    const std::string name = "model.layers." + std::to_string(i / 9) + "." + kinds[i % 9] +
                             (i % 9 < 7 ? ".weight" : ".bias");
    plan.push_back({name, dtype, ShapeFor(elements, static_cast<size_t>(i)), elements * elem});
  }
  return plan;
}

}  // namespace

Status GenerateCheckpoint(const std::string& dir, const CheckpointSpec& spec) {
  if (spec.tensors < 4 || spec.shards < 1 || spec.shards > spec.tensors) {
    return Status(StatusCode::kInvalidArgument, "need tensors >= 4 and 1 <= shards <= tensors");
  }
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error)
    return Status(StatusCode::kUnavailable, "cannot create " + dir + ": " + error.message());
  const std::vector<Planned> plan = Plan(spec);
  const size_t per_shard = (plan.size() + spec.shards - 1) / spec.shards;
  std::string weight_map;
  uint64_t total = 0;
  for (int s = 0; s < spec.shards; ++s) {
    const size_t begin = s * per_shard;
    const size_t end = std::min(plan.size(), begin + per_shard);
    std::vector<std::vector<unsigned char>> buffers;
    std::vector<TensorView> views;
    for (size_t i = begin; i < end; ++i) {
      const Planned& p = plan[i];
      buffers.emplace_back(p.bytes);
      uint64_t state = (spec.seed + 1) * 0x9E3779B97F4A7C15ULL ^ (i + 1) * 0xBF58476D1CE4E5B9ULL;
      std::vector<unsigned char>& bytes = buffers.back();
      for (size_t b = 0; b < bytes.size(); b += 8) {
        const uint64_t word = Next(state);
        for (size_t k = 0; k < 8 && b + k < bytes.size(); ++k) bytes[b + k] = word >> (8 * k);
      }
      if (p.dtype == DType::kBool) {
        for (unsigned char& c : bytes) c &= 1;
      }
      views.push_back({p.name, p.dtype, p.shape, bytes.empty() ? nullptr : bytes.data(), p.bytes});
      total += p.bytes;
    }
    char file[64];
    if (spec.shards == 1) {
      std::snprintf(file, sizeof file, "model.safetensors");
    } else {
      std::snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, spec.shards);
    }
    for (const TensorView& v : views) {
      weight_map +=
          std::string(weight_map.empty() ? "" : ",\n") + "    \"" + v.name + "\": \"" + file + "\"";
    }
    Status written = WriteSafetensors(dir + "/" + file, views,
                                      {{"format", "pt"},
                                       {"generator", "netloader-make-checkpoint"},
                                       {"seed", std::to_string(spec.seed)}});
    if (!written.ok()) return written;
  }
  if (spec.shards > 1) {
    std::ofstream index(dir + "/model.safetensors.index.json");
    index << "{\n  \"metadata\": {\"total_size\": " << total << "},\n  \"weight_map\": {\n"
          << weight_map << "\n  }\n}\n";
    if (!index) return Status(StatusCode::kUnavailable, "cannot write the index in " + dir);
  }
  return Status::Ok();
}

}  // namespace netloader::examples
