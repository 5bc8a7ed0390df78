// The example engine's pure parts: --model-loader-extra-config parsing and the TP/PP shard plan.

#include <gtest/gtest.h>

#include <set>

#include "examples/engine/llama.h"
#include "netloader/loader_config.h"
#include "tests/support/test_util.h"

namespace llama {
namespace {

using netloader::ParseLoaderConfig;
using netloader::testing::TempDir;

TEST(LoaderConfigTest, NetloaderKeysAreReadAndHostPortBecomesAnEndpoint) {
  auto config = ParseLoaderConfig(R"({
      "SOURCE": [{"device_id": 1, "sources": ["10.0.0.5:7001", "tcp://10.0.0.6:7001"]}],
      "LISTEN_PORT": 7000, "MODEL": "org/llama@rev", "OUTPUT_PREFIX": "/tmp/ep-",
      "STALL_TIMEOUT": 2.5, "SERVE": false, "TENSORS": ["model.layers.*.mlp.*", "lm_head.weight"]})",
                                  2);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->sources.at(1),
            (std::vector<std::string>{"tcp://10.0.0.5:7001", "tcp://10.0.0.6:7001"}));
  EXPECT_EQ(config->sources.count(0), 0u);
  EXPECT_EQ(config->listen_port, 7000);
  EXPECT_EQ(config->model_id, "org/llama@rev");
  EXPECT_EQ(config->stall_timeout_s, 2.5);
  EXPECT_FALSE(config->serve);
  EXPECT_EQ(config->tensors, (std::vector<std::string>{"model.layers.*.mlp.*", "lm_head.weight"}));
}

TEST(LoaderConfigTest, InlineKeysWinOverTheConfigFile) {
  TempDir tmp;
  netloader::testing::WriteFile(tmp / "c.json", R"({"LISTEN_PORT": 6000, "MODEL": "from-file"})");
  auto config = ParseLoaderConfig(
      R"({"CONFIG_FILE": ")" + (tmp / "c.json") + R"(", "LISTEN_PORT": 7000})", 1);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->listen_port, 7000);
  EXPECT_EQ(config->model_id, "from-file");
}

TEST(LoaderConfigTest, EveryMistakeNamesTheKeyAndWhere) {
  TempDir tmp;
  netloader::testing::WriteFile(tmp / "bad.json", R"({"WINDOW": 0})");
  const std::pair<std::string, std::string> cases[] = {
      {R"({"LISTEN_PORT": 65535})", "LISTEN_PORT must be an integer in [1, 65534]"},  // 2 ranks
      {R"({"SERVE": "yes"})", "SERVE must be true or false"},
      {R"({"REGISTER_TIMEOUT": 0})", "REGISTER_TIMEOUT must be a number of seconds"},
      {R"({"SOURCE": [{"device_id": 0, "sources": ["a:1"]}, {"device_id": 0, "sources": []}]})",
       "lists device_id 0 twice"},
      {R"({"SOURCE": [{"device_id": 0}]})", "SOURCE must be a list of"},
      {R"({"RENDEZVOUS": ""})", "RENDEZVOUS must be a non-empty string"},
      {R"({"TENSORS": []})", "TENSORS must be a non-empty list of tensor name patterns"},
      {R"({"TENSORS": ["ok.*", "bad\\"]})", "TENSORS has tensor pattern 'bad\\' ends in a lone"},
      {R"({"CONFIG_FILE": ")" + (tmp / "bad.json") + R"("})", "bad.json: WINDOW must be"},
      {"[]", "must be a JSON object"},
  };
  for (const auto& [json, wanted] : cases) {
    auto config = ParseLoaderConfig(json, 2);
    ASSERT_FALSE(config.ok()) << json;
    EXPECT_EQ(config.status().code(), netloader::StatusCode::kInvalidArgument) << json;
    EXPECT_NE(config.status().message().find(wanted), std::string::npos)
        << json << " -> " << config.status().message();
  }
}

netloader::CheckpointLayout LayoutOf(const ModelConfig& c) {
  // Only names, dtypes and shapes matter to the plan.
  netloader::ShardLayout file;
  file.path = "model.safetensors";
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    file.tensors.push_back({name, netloader::DType::kF32, shape, 0, 0});
  };
  const int64_t d = c.hidden_size, kv = int64_t{c.num_key_value_heads} * c.head_dim();
  add("model.embed_tokens.weight", {c.vocab_size, d});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {d});
    add(p + "self_attn.q_proj.weight", {d, d});
    add(p + "self_attn.k_proj.weight", {kv, d});
    add(p + "self_attn.v_proj.weight", {kv, d});
    add(p + "self_attn.o_proj.weight", {d, d});
    add(p + "post_attention_layernorm.weight", {d});
    add(p + "mlp.gate_proj.weight", {c.intermediate_size, d});
    add(p + "mlp.up_proj.weight", {c.intermediate_size, d});
    add(p + "mlp.down_proj.weight", {d, c.intermediate_size});
  }
  add("model.norm.weight", {d});
  add("lm_head.weight", {c.vocab_size, d});
  netloader::CheckpointLayout layout;
  layout.shards.push_back(file);
  return layout;
}

TEST(ShardPlanTest, ColumnParallelSplitsRowsRowParallelSplitsColumnsNormsAreWhole) {
  ModelConfig c;  // 256 wide, 8 heads, 4 kv heads, 4 layers
  auto plan = PlanShards(LayoutOf(c), c, Parallel{2, 1, 1, 0});
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  std::map<std::string, ShardSpec> by_name;
  for (const ShardSpec& s : *plan) by_name[s.full.name] = s;
  EXPECT_EQ(by_name["model.layers.0.self_attn.q_proj.weight"].shape,
            (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(by_name["model.layers.0.self_attn.q_proj.weight"].start, 128);
  EXPECT_EQ(by_name["model.layers.0.self_attn.o_proj.weight"].shape,
            (std::vector<int64_t>{256, 128}));
  EXPECT_EQ(by_name["model.layers.0.self_attn.o_proj.weight"].split_dim, 1);
  EXPECT_EQ(by_name["model.layers.0.mlp.down_proj.weight"].shape, (std::vector<int64_t>{256, 352}));
  EXPECT_EQ(by_name["lm_head.weight"].shape, (std::vector<int64_t>{256, 256}));
  EXPECT_EQ(by_name["model.norm.weight"].shape, (std::vector<int64_t>{256}));
  EXPECT_EQ(by_name["model.norm.weight"].split_dim, -1);
}

TEST(ShardPlanTest, APipelineStageHoldsOnlyItsLayers) {
  ModelConfig c;
  auto first = PlanShards(LayoutOf(c), c, Parallel{1, 0, 2, 0});
  auto last = PlanShards(LayoutOf(c), c, Parallel{1, 0, 2, 1});
  ASSERT_TRUE(first.ok() && last.ok());
  auto names = [](const std::vector<ShardSpec>& plan) {
    std::set<std::string> out;
    for (const ShardSpec& s : plan) out.insert(s.full.name);
    return out;
  };
  EXPECT_TRUE(names(*first).count("model.embed_tokens.weight"));
  EXPECT_TRUE(names(*first).count("model.layers.1.mlp.up_proj.weight"));
  EXPECT_FALSE(names(*first).count("model.layers.2.mlp.up_proj.weight"));
  EXPECT_FALSE(names(*first).count("lm_head.weight"));
  EXPECT_TRUE(names(*last).count("lm_head.weight"));
  EXPECT_TRUE(names(*last).count("model.layers.3.input_layernorm.weight"));
  EXPECT_EQ(first->size() + last->size(), LayoutOf(c).tensor_count());
}

TEST(ShardPlanTest, SizesThatDoNotDivideAndWrongTensorsAreNamed) {
  ModelConfig c;
  auto odd = PlanShards(LayoutOf(c), c, Parallel{3, 0, 1, 0});
  ASSERT_FALSE(odd.ok());
  EXPECT_NE(odd.status().message().find("vocab_size 512 is not divisible by the tensor-parallel "
                                        "size 3"),
            std::string::npos)
      << odd.status().message();
  netloader::CheckpointLayout extra = LayoutOf(c);
  extra.shards[0].tensors.push_back({"rotary.inv_freq", netloader::DType::kF32, {64}, 0, 0});
  auto unexpected = PlanShards(extra, c, Parallel{});
  ASSERT_FALSE(unexpected.ok());
  EXPECT_NE(unexpected.status().message().find("unexpected tensor 'rotary.inv_freq'"),
            std::string::npos);
  netloader::CheckpointLayout missing = LayoutOf(c);
  missing.shards[0].tensors.pop_back();
  auto lacks = PlanShards(missing, c, Parallel{});
  ASSERT_FALSE(lacks.ok());
  EXPECT_NE(lacks.status().message().find("lacks tensor 'lm_head.weight'"), std::string::npos);
}

}  // namespace
}  // namespace llama
