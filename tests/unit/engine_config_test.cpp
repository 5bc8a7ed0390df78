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
  EXPECT_EQ(config->server.model_id, "org/llama@rev");
  EXPECT_EQ(config->client.model_id, "org/llama@rev");
  EXPECT_EQ(config->server.stall_timeout, std::chrono::milliseconds(2500));
  EXPECT_EQ(config->client.stall_timeout, std::chrono::milliseconds(2500));
  EXPECT_FALSE(config->serve);
  EXPECT_EQ(config->tensors, (std::vector<std::string>{"model.layers.*.mlp.*", "lm_head.weight"}));
}

TEST(LoaderConfigTest, DefaultsAreTheOptionsStructsOwn) {
  auto config = ParseLoaderConfig("{}", 1);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  const netloader::ServerOptions server;
  const netloader::ClientOptions client;
  EXPECT_EQ(config->server.max_concurrent_transfers, server.max_concurrent_transfers);
  EXPECT_EQ(config->server.chunk_bytes, server.chunk_bytes);
  EXPECT_EQ(config->server.fanout, server.fanout);
  EXPECT_EQ(config->server.heartbeat_timeout, server.heartbeat_timeout);
  EXPECT_EQ(config->client.register_timeout, client.register_timeout);
  EXPECT_EQ(config->client.stripe, client.stripe);
  EXPECT_EQ(config->client.window, client.window);
  EXPECT_EQ(config->server.transport.interface, server.transport.interface);
  // --help states the same defaults.
  const std::string help = netloader::LoaderConfigHelp();
  EXPECT_NE(help.find("REGISTER_TIMEOUT: seconds a source has to answer (default " +
                      std::to_string(client.register_timeout.count() / 1000) + ")"),
            std::string::npos)
      << help;
  EXPECT_NE(help.find("MAX_CLIENTS: instances served at once when serving (default " +
                      std::to_string(server.max_concurrent_transfers) + ")"),
            std::string::npos)
      << help;
}

TEST(LoaderConfigTest, EachRanksOptionsComeFromOneMapping) {
  auto config = ParseLoaderConfig(R"({
      "SOURCE": [{"device_id": 1, "sources": ["10.0.0.5:7001"]}], "LISTEN_PORT": 7000,
      "LISTEN_HOST": "10.0.0.9", "WINDOW": 8, "REGISTER_TIMEOUT": 90, "MAX_CLIENTS": 2,
      "CHUNK_MIB": 4, "RENDEZVOUS": "file:/tmp/rv", "ADVERTISE_HOST": "pod-7.llama"})",
                                  2);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  const netloader::Partition partition{2, 1, 1, 0, "key"};
  const netloader::RankOptions rank1 = netloader::OptionsForRank(*config, 1, partition, "s3cret");
  EXPECT_EQ(rank1.server.listen, "tcp://10.0.0.9:7001");
  EXPECT_EQ(rank1.server.advertise, "pod-7.llama");
  EXPECT_EQ(rank1.client.sources, (std::vector<std::string>{"tcp://10.0.0.5:7001"}));
  EXPECT_EQ(rank1.server.window, 8);
  EXPECT_EQ(rank1.client.window, 8);
  EXPECT_EQ(rank1.server.max_concurrent_transfers, 2);
  EXPECT_EQ(rank1.server.chunk_bytes, 4u << 20);
  EXPECT_EQ(rank1.client.busy_timeout, std::chrono::seconds(90))
      << "a busy source is retried for at least the register deadline";
  EXPECT_EQ(rank1.server.partition.tp_rank, 1);
  EXPECT_EQ(rank1.client.partition.layout_key, "key");
  EXPECT_EQ(rank1.server.secret, "s3cret");
  EXPECT_EQ(rank1.client.transport.rendezvous_uri, "file:/tmp/rv");
  EXPECT_TRUE(rank1.relay) << "SERVE (default) with a shared RENDEZVOUS relays";
  const netloader::RankOptions rank0 = netloader::OptionsForRank(*config, 0, partition, "");
  EXPECT_TRUE(rank0.client.sources.empty()) << "no SOURCE entry: rank 0 loads from disk";
  EXPECT_EQ(netloader::OptionsForRank(*ParseLoaderConfig("{}", 1), 0, {}, "").server.listen,
            "tcp://127.0.0.1:0");
  EXPECT_FALSE(netloader::OptionsForRank(*ParseLoaderConfig("{}", 1), 0, {}, "").relay)
      << "no shared rendezvous: serve only once loaded";
  EXPECT_FALSE(
      netloader::OptionsForRank(
          *ParseLoaderConfig(R"({"RENDEZVOUS": "file:/x", "TENSORS": ["a"]})", 1), 0, {}, "")
          .relay)
      << "a partial load does not relay";
  const netloader::RankOptions helpers =
      netloader::OptionsForRank(*ParseLoaderConfig(R"({"MPI_HELPERS": true})", 1), 0, {}, "");
  EXPECT_TRUE(helpers.relay) << "MPI in helpers: a relay needs no shared rendezvous";
  EXPECT_TRUE(helpers.server.transport.mpi_helpers);
  EXPECT_TRUE(helpers.client.transport.mpi_helpers);
  EXPECT_EQ(
      netloader::OptionsForRank(*ParseLoaderConfig("{}", 1), 0, {}, "").client.cold_start_wait,
      netloader::ClientOptions().cold_start_wait);
  EXPECT_EQ(netloader::OptionsForRank(*ParseLoaderConfig(R"({"COLD_START_WAIT": 0})", 1), 0, {}, "")
                .client.cold_start_wait.count(),
            0)
      << "0: a rank that finds no holder reads from disk at once";
}

TEST(LoaderConfigTest, InlineKeysWinOverTheConfigFile) {
  TempDir tmp;
  netloader::testing::WriteFile(tmp / "c.json", R"({"LISTEN_PORT": 6000, "MODEL": "from-file"})");
  auto config = ParseLoaderConfig(
      R"({"CONFIG_FILE": ")" + (tmp / "c.json") + R"(", "LISTEN_PORT": 7000})", 1);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->listen_port, 7000);
  EXPECT_EQ(config->client.model_id, "from-file");
}

TEST(LoaderConfigTest, EveryMistakeNamesTheKeyAndWhere) {
  TempDir tmp;
  netloader::testing::WriteFile(tmp / "bad.json", R"({"WINDOW": 0})");
  const std::pair<std::string, std::string> cases[] = {
      {R"({"LISTEN_PORT": 65535})", "LISTEN_PORT must be an integer in [1, 65534]"},  // 2 ranks
      {R"({"SERVE": "yes"})", "SERVE must be true or false"},
      {R"({"REGISTER_TIMEOUT": 0})", "REGISTER_TIMEOUT must be a number of seconds"},
      {R"({"COLD_START_WAIT": -1})", "COLD_START_WAIT must be a number of seconds in [0, 86400]"},
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
