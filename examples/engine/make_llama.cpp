// netloader-make-llama: writes a Llama-architecture checkpoint (config.json + model.safetensors,
// float32) with seeded random weights for netloader-llama, of any size.

#include <sys/stat.h>
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "examples/engine/llama.h"
#include "netloader/safetensors.h"

namespace {

// splitmix64: the same seed gives the same weights on every machine.
struct Random {
  uint64_t state;
  float Uniform(float bound) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return bound * (static_cast<float>(z >> 40) / static_cast<float>(1ull << 23) - 1.0f);
  }
};

uint64_t Params(const llama::ModelConfig& c, int layers) {
  const uint64_t d = c.hidden_size,
                 kv = static_cast<uint64_t>(c.num_key_value_heads) * c.head_dim();
  const uint64_t per_layer = 2 * d + 2 * d * d + 2 * kv * d + 3 * d * c.intermediate_size;
  return 2 * static_cast<uint64_t>(c.vocab_size) * d + d + per_layer * layers;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "netloader-make-llama: write a seeded Llama-architecture checkpoint "
      "(config.json + model.safetensors, float32) for netloader-llama."};
  std::string output;
  llama::ModelConfig c;
  uint64_t seed = 1;
  double size_mib = 0;
  app.add_option("--output", output, "Directory to write into (created if missing)")->required();
  app.add_option("--hidden-size", c.hidden_size, "Model width")->capture_default_str();
  app.add_option("--layers", c.num_hidden_layers, "Decoder layers")->capture_default_str();
  app.add_option("--heads", c.num_attention_heads, "Attention heads")->capture_default_str();
  app.add_option("--kv-heads", c.num_key_value_heads, "Key/value heads")->capture_default_str();
  app.add_option("--intermediate-size", c.intermediate_size, "MLP width")->capture_default_str();
  app.add_option("--vocab-size", c.vocab_size, "Vocabulary (>= 256)")->capture_default_str();
  app.add_option("--size-mib", size_mib,
                 "Instead of --layers: as many layers as make about this size")
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "Seed of the weights")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (size_mib > 0) {
    const double per_layer = (Params(c, 1) - Params(c, 0)) * 4.0;
    c.num_hidden_layers = std::max(
        1, static_cast<int>(std::lround((size_mib * 1048576 - Params(c, 0) * 4.0) / per_layer)));
  }

  mkdir(output.c_str(), 0755);
  const std::string config_path = output + "/config.json";
  { std::ofstream(config_path) << llama::ModelConfigJson(c); }
  netloader::Result<llama::ModelConfig> check = llama::ReadModelConfig(config_path);
  if (!check.ok()) {
    std::fprintf(stderr, "netloader-make-llama: %s\n", check.status().message().c_str());
    return 2;
  }

  // Weights with variance 1/fan_in keep activations near 1 through the layers, so the greedy
  // output depends on every weight rather than saturating.
  Random random{seed};
  std::vector<std::vector<float>> storage;
  std::vector<netloader::TensorView> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float bound, float center) {
    const size_t n = shape.size() == 1 ? shape[0] : shape[0] * shape[1];
    storage.emplace_back(n);
    for (float& v : storage.back()) v = center + random.Uniform(bound);
    tensors.push_back({name, netloader::DType::kF32, shape, storage.back().data(), n * 4});
  };
  const int64_t d = c.hidden_size, v = c.vocab_size, i = c.intermediate_size;
  const int64_t q = int64_t{c.num_attention_heads} * c.head_dim();
  const int64_t kv = int64_t{c.num_key_value_heads} * c.head_dim();
  const float in_d = std::sqrt(3.0f / d), in_q = std::sqrt(3.0f / q), in_i = std::sqrt(3.0f / i);
  add("model.embed_tokens.weight", {v, d}, 4.0f, 0.0f);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {d}, 0.1f, 1.0f);
    add(p + "self_attn.q_proj.weight", {q, d}, in_d, 0.0f);
    add(p + "self_attn.k_proj.weight", {kv, d}, in_d, 0.0f);
    add(p + "self_attn.v_proj.weight", {kv, d}, in_d, 0.0f);
    add(p + "self_attn.o_proj.weight", {d, q}, in_q, 0.0f);
    add(p + "post_attention_layernorm.weight", {d}, 0.1f, 1.0f);
    add(p + "mlp.gate_proj.weight", {i, d}, in_d, 0.0f);
    add(p + "mlp.up_proj.weight", {i, d}, in_d, 0.0f);
    add(p + "mlp.down_proj.weight", {d, i}, in_i, 0.0f);
  }
  add("model.norm.weight", {d}, 0.1f, 1.0f);
  add("lm_head.weight", {v, d}, in_d, 0.0f);
  netloader::Status status =
      netloader::WriteSafetensors(output + "/model.safetensors", tensors, {{"format", "pt"}});
  if (!status.ok()) {
    std::fprintf(stderr, "netloader-make-llama: %s\n", status.message().c_str());
    return 7;
  }
  std::printf("wrote %d layers, %zu tensors, %.1f MiB (seed %llu) to %s\n", c.num_hidden_layers,
              tensors.size(), Params(c, c.num_hidden_layers) * 4.0 / 1048576.0,
              static_cast<unsigned long long>(seed), output.c_str());
  return 0;
}
