// The example engine (netloader-llama) as users run it: separate instances, single processes or
// N ranks under mpirun, loading with --load-format=netloader from each other. Every test checks
// what a user cares about: the greedy output (tokens and a digest of every logit) is exactly the
// output of the same instance loaded from disk.

#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "tests/support/test_util.h"

namespace netloader {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::Child;
using testing::JsonLines;
using testing::Rendezvous;
using testing::TempDir;

std::string Bin(const std::string& name) { return testing::BinDir() + "/" + name; }

void MakeLlama(const std::string& dir, std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {Bin("netloader-make-llama"), "--output", dir, "--seed", "5"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Child gen(argv, dir + "-gen");
  ASSERT_EQ(gen.Wait(60s), 0) << gen.Stderr();
}

// argv of an engine instance of `ranks` processes (mpirun when more than one).
std::vector<std::string> EngineArgv(int ranks, const std::string& rendezvous,
                                    std::vector<std::string> args) {
  std::vector<std::string> argv;
  if (ranks > 1) {
    argv = {"/usr/bin/env",
            "OMPI_ALLOW_RUN_AS_ROOT=1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
            "OMPI_MCA_oob_tcp_if_include=lo",
            "OMPI_MCA_btl_tcp_if_include=lo",
            "mpirun",
            "--oversubscribe",
            "-np",
            std::to_string(ranks)};
    if (!rendezvous.empty()) {
      argv.push_back("--ompi-server");
      argv.push_back(rendezvous);
    }
  }
  argv.push_back(Bin("netloader-llama"));
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

// Each rank's report (the line with its tokens), by rank.
std::map<int, json> Reports(const std::string& stdout_text) {
  std::map<int, json> out;
  for (const json& j : JsonLines(stdout_text)) {
    if (j.contains("tokens")) out[j["rank"].get<int>()] = j;
  }
  return out;
}

struct EngineRun {
  int exit_code;
  std::map<int, json> ranks;
  std::string stderr_text;
};

EngineRun RunEngine(const TempDir& tmp, const std::string& name, std::vector<std::string> argv) {
  Child engine(argv, tmp / name);
  const int code = engine.Wait(120s);
  return {code, Reports(engine.Stdout()), engine.Stderr()};
}

// The common case: one process, netloader's private rendezvous.
EngineRun RunSingle(const TempDir& tmp, const std::string& name, std::vector<std::string> args) {
  return RunEngine(tmp, name, EngineArgv(1, "", std::move(args)));
}

std::string SourceConfig(const std::map<int, std::vector<std::string>>& sources, json extra = {}) {
  json config = extra.is_null() ? json::object() : extra;
  config["SERVE"] = false;
  config["SOURCE"] = json::array();
  for (const auto& [rank, list] : sources) {
    config["SOURCE"].push_back({{"device_id", rank}, {"sources", list}});
  }
  return config.dump();
}

// A running instance that loaded from disk (no SOURCE) and serves; SIGTERM on destruction.
class Instance {
 public:
  Instance(const TempDir& tmp, const std::string& name, const std::string& model, int tp,
           const std::string& rendezvous = "", std::vector<std::string> extra = {}, int pp = 1,
           json extra_config = json::object()) {
    json config = extra_config;
    config["OUTPUT_PREFIX"] = tmp / (name + "-endpoint-");
    if (!rendezvous.empty()) config["RENDEZVOUS"] = rendezvous;
    std::vector<std::string> args = {"--model",
                                     model,
                                     "--load-format",
                                     "netloader",
                                     "--model-loader-extra-config",
                                     config.dump(),
                                     "--tensor-parallel-size",
                                     std::to_string(tp),
                                     "--pipeline-parallel-size",
                                     std::to_string(pp),
                                     "--keep-running"};
    args.insert(args.end(), extra.begin(), extra.end());
    child_ = std::make_unique<Child>(EngineArgv(tp * pp, rendezvous, args), tmp / name);
    for (int r = 0; r < tp * pp; ++r) {
      endpoints_.push_back(
          testing::WaitForLine(tmp / (name + "-endpoint-" + std::to_string(r) + ".txt"), 60s));
      EXPECT_FALSE(endpoints_.back().empty()) << child_->Stderr();
    }
  }
  ~Instance() { Stop(); }
  int Stop() {
    child_->Signal(SIGTERM);
    return child_->Wait(30s);
  }
  const std::string& endpoint(int rank) const { return endpoints_[rank]; }
  Child& child() { return *child_; }

 private:
  std::unique_ptr<Child> child_;
  std::vector<std::string> endpoints_;
};

// Same greedy output as `reference`, bit for bit, on every rank.
void ExpectSameOutput(const EngineRun& run, const EngineRun& reference) {
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  ASSERT_EQ(run.ranks.size(), reference.ranks.size()) << run.stderr_text;
  for (const auto& [rank, report] : run.ranks) {
    EXPECT_EQ(report["tokens"], reference.ranks.at(rank)["tokens"]) << "rank " << rank;
    EXPECT_EQ(report["logits_digest"], reference.ranks.at(rank)["logits_digest"])
        << "rank " << rank;
  }
}

EngineRun DiskRun(const TempDir& tmp, const std::string& model, int tp = 1) {
  EngineRun run = RunEngine(tmp, "disk-tp" + std::to_string(tp),
                            EngineArgv(tp, "",
                                       {"--model", model, "--load-format", "safetensors",
                                        "--tensor-parallel-size", std::to_string(tp)}));
  EXPECT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_EQ(run.ranks.size(), static_cast<size_t>(tp)) << run.stderr_text;
  return run;
}

TEST(EngineTest, Tp1LoadedThroughNetloaderDecodesExactlyAsFromDisk) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  const EngineRun disk = DiskRun(tmp, tmp / "model");
  Instance a(tmp, "a", tmp / "model", 1);
  EngineRun b = RunSingle(tmp, "b",
                          {"--model", tmp / "model", "--model-loader-extra-config",
                           SourceConfig({{0, {a.endpoint(0)}}})});
  ExpectSameOutput(b, disk);
  EXPECT_EQ(b.ranks[0]["loaded_from"], a.endpoint(0)) << b.stderr_text;
  EXPECT_FALSE(b.ranks[0].contains("fallback_reason"));
  // The loaded weights would change the output if any bit differed: the digest covers every
  // logit, and the disk run's tokens are not degenerate.
  std::set<int> distinct;
  for (int t : disk.ranks.at(0)["tokens"]) distinct.insert(t);
  EXPECT_GE(distinct.size(), 4u);
}

TEST(EngineTest, Tp2RanksLoadFromTheMatchingRanksAndDecodeExactlyAsFromDisk) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  Rendezvous rendezvous(tmp);
  ASSERT_TRUE(rendezvous.ready()) << rendezvous.child().Stderr();
  const EngineRun disk = DiskRun(tmp, tmp / "model", 2);
  Instance a(tmp, "a", tmp / "model", 2, rendezvous.spec());
  EngineRun b = RunEngine(tmp, "b",
                          EngineArgv(2, rendezvous.spec(),
                                     {"--model", tmp / "model", "--tensor-parallel-size", "2",
                                      "--model-loader-extra-config",
                                      SourceConfig({{0, {a.endpoint(0)}}, {1, {a.endpoint(1)}}},
                                                   {{"RENDEZVOUS", rendezvous.spec()}})}));
  ExpectSameOutput(b, disk);
  EXPECT_EQ(b.ranks[0]["loaded_from"], a.endpoint(0)) << b.stderr_text;
  EXPECT_EQ(b.ranks[1]["loaded_from"], a.endpoint(1)) << b.stderr_text;
  EXPECT_EQ(b.ranks[0]["bytes"], b.ranks[1]["bytes"]) << "each rank holds half";
}

TEST(EngineTest, Pp2StagesLoadFromTheMatchingStagesAndDecodeExactlyAsTp1FromDisk) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  Rendezvous rendezvous(tmp);
  ASSERT_TRUE(rendezvous.ready()) << rendezvous.child().Stderr();
  // A pipeline does the same arithmetic as one process, so even the logits digest matches TP=1.
  const EngineRun disk = DiskRun(tmp, tmp / "model", 1);
  Instance a(tmp, "a", tmp / "model", 1, rendezvous.spec(), {}, 2);
  EngineRun b = RunEngine(tmp, "b",
                          EngineArgv(2, rendezvous.spec(),
                                     {"--model", tmp / "model", "--pipeline-parallel-size", "2",
                                      "--model-loader-extra-config",
                                      SourceConfig({{0, {a.endpoint(0)}}, {1, {a.endpoint(1)}}},
                                                   {{"RENDEZVOUS", rendezvous.spec()}})}));
  ASSERT_EQ(b.exit_code, 0) << b.stderr_text;
  for (int rank : {0, 1}) {
    EXPECT_EQ(b.ranks[rank]["loaded_from"], a.endpoint(rank)) << b.stderr_text;
    EXPECT_EQ(b.ranks[rank]["tokens"], disk.ranks.at(0)["tokens"]);
    EXPECT_EQ(b.ranks[rank]["logits_digest"], disk.ranks.at(0)["logits_digest"]);
  }
}

// TENSORS ["*"]: each stage of a PP=2 instance loads its layers from a PP=1 instance, which holds
// the whole model (a partial load: the pipeline split is not compared), and decodes bit for bit
// as one process from disk.
TEST(EngineTest, Pp2StagesLoadTheirLayersFromAPp1InstanceAndDecodeExactlyAsFromDisk) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  Rendezvous rendezvous(tmp);
  ASSERT_TRUE(rendezvous.ready()) << rendezvous.child().Stderr();
  const EngineRun disk = DiskRun(tmp, tmp / "model", 1);
  Instance a(tmp, "a", tmp / "model", 1, rendezvous.spec());
  EngineRun b = RunEngine(
      tmp, "b",
      EngineArgv(
          2, rendezvous.spec(),
          {"--model", tmp / "model", "--pipeline-parallel-size", "2", "--model-loader-extra-config",
           SourceConfig({{0, {a.endpoint(0)}}, {1, {a.endpoint(0)}}},
                        {{"RENDEZVOUS", rendezvous.spec()}, {"TENSORS", {"*"}}})}));
  ASSERT_EQ(b.exit_code, 0) << b.stderr_text;
  ASSERT_EQ(b.ranks.size(), 2u) << b.stderr_text;
  uint64_t bytes = 0;
  for (int rank : {0, 1}) {
    EXPECT_EQ(b.ranks[rank]["loaded_from"], a.endpoint(0)) << b.stderr_text;
    EXPECT_EQ(b.ranks[rank]["tensors_from_disk"], 0) << b.ranks[rank].dump();
    EXPECT_EQ(b.ranks[rank]["bytes_pulled"], b.ranks[rank]["bytes"]) << b.ranks[rank].dump();
    EXPECT_EQ(b.ranks[rank]["tokens"], disk.ranks.at(0)["tokens"]);
    EXPECT_EQ(b.ranks[rank]["logits_digest"], disk.ranks.at(0)["logits_digest"]);
    bytes += b.ranks[rank]["bytes"].get<uint64_t>();
  }
  EXPECT_EQ(bytes, disk.ranks.at(0)["bytes"].get<uint64_t>()) << "the two stages hold the model";
  ASSERT_EQ(a.Stop(), 0);
  EXPECT_NE(a.child().Stdout().find("\"served\":2"), std::string::npos) << a.child().Stdout();
}

// An expert-style subset: TENSORS picks some of each layer's tensors (the MLP), which come from
// the peer; the rest come from disk; the output is bit for bit that of a disk load.
TEST(EngineTest, ASubsetOfEachLayerComesFromThePeerAndTheRestFromDisk) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  const EngineRun disk = DiskRun(tmp, tmp / "model");
  Instance a(tmp, "a", tmp / "model", 1);
  EngineRun b = RunSingle(
      tmp, "b",
      {"--model", tmp / "model", "--model-loader-extra-config",
       SourceConfig({{0, {a.endpoint(0)}}}, {{"TENSORS", {"model.layers.*.mlp.*_proj.weight"}}})});
  ExpectSameOutput(b, disk);
  const json& report = b.ranks[0];
  EXPECT_EQ(report["loaded_from"], a.endpoint(0)) << b.stderr_text;
  const int layers = 4;  // netloader-make-llama's default
  EXPECT_EQ(report["tensors_loaded"], 3 * layers) << report.dump();
  EXPECT_EQ(report["tensors_from_disk"], 6 * layers + 3) << report.dump();
  EXPECT_GT(report["bytes_pulled"].get<uint64_t>(), 0u);
  EXPECT_LT(report["bytes_pulled"].get<uint64_t>(), report["bytes"].get<uint64_t>());
}

// DELTA_FROM: an instance holding an older copy of the weights (one byte differs) pulls only the
// chunk that changed from a running instance of the new ones, and decodes exactly as from disk.
TEST(EngineTest, ADeltaFromAnOlderCopyPullsOnlyTheChangedChunkAndDecodesAsFromDisk) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  std::filesystem::copy(tmp / "model", tmp / "older");
  {
    std::fstream file(tmp / "older/model.safetensors",
                      std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(0, std::ios::end);
    const std::streamoff middle = file.tellg() / 2;
    file.seekg(middle);
    const char byte = static_cast<char>(file.get() ^ 0x5a);
    file.seekp(middle);
    file.put(byte);
    ASSERT_TRUE(file.good());
  }
  const EngineRun disk = DiskRun(tmp, tmp / "model");
  Instance a(tmp, "a", tmp / "model", 1, "", {}, 1, {{"CHUNK_MIB", 1}});
  EngineRun b = RunSingle(tmp, "b",
                          {"--model", tmp / "model", "--model-loader-extra-config",
                           SourceConfig({{0, {a.endpoint(0)}}}, {{"DELTA_FROM", tmp / "older"}})});
  ExpectSameOutput(b, disk);
  EXPECT_EQ(b.ranks[0]["loaded_from"], a.endpoint(0)) << b.stderr_text;
  const uint64_t bytes = b.ranks[0]["bytes"], pulled = b.ranks[0]["bytes_pulled"];
  EXPECT_GT(pulled, 0u) << "the changed chunk";
  EXPECT_LE(pulled, 1u << 20) << "one 1 MiB chunk of " << bytes;
  EXPECT_EQ(pulled + b.ranks[0]["bytes_reused"].get<uint64_t>(), bytes);
}

TEST(EngineTest, ChainDiskToAToBToCKeepsTheOutput) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  Instance a(tmp, "a", tmp / "model", 1);
  // B loads from A and serves in turn.
  json b_config = {{"SOURCE", {{{"device_id", 0}, {"sources", {a.endpoint(0)}}}}},
                   {"OUTPUT_PREFIX", tmp / "b-endpoint-"}};
  Child b(EngineArgv(1, "",
                     {"--model", tmp / "model", "--model-loader-extra-config", b_config.dump(),
                      "--keep-running"}),
          tmp / "b");
  const std::string b_endpoint = testing::WaitForLine(tmp / "b-endpoint-0.txt", 60s);
  ASSERT_FALSE(b_endpoint.empty()) << b.Stderr();
  EngineRun c = RunSingle(
      tmp, "c",
      {"--model", tmp / "model", "--model-loader-extra-config", SourceConfig({{0, {b_endpoint}}})});
  ASSERT_EQ(c.exit_code, 0) << c.stderr_text;
  EXPECT_EQ(c.ranks[0]["loaded_from"], b_endpoint);
  const std::map<int, json> a_out = Reports(a.child().Stdout());
  EXPECT_EQ(c.ranks[0]["tokens"], a_out.at(0)["tokens"]);
  EXPECT_EQ(c.ranks[0]["logits_digest"], a_out.at(0)["logits_digest"]);
  b.Signal(SIGTERM);
  ASSERT_EQ(b.Wait(30s), 0) << b.Stderr();
  const std::map<int, json> b_out = Reports(b.Stdout());
  EXPECT_EQ(b_out.at(0)["loaded_from"], a.endpoint(0));
  EXPECT_NE(b.Stdout().find("\"served\":1"), std::string::npos) << b.Stdout();
}

// A serving instance keeps producing tokens while a transfer is in progress. B holds its load
// open after the first verified chunk (a hidden test hook) until A has decoded three tokens
// with that transfer in progress, so the overlap is a fact the test waits for, not a matter of
// timing: A's tokens with "serving" >= 1 are the ones decoded during a transfer.
TEST(EngineTest, AnInstanceKeepsDecodingWhileItServesATransfer) {
  TempDir tmp;
  MakeLlama(tmp / "model", {"--size-mib", "64"});  // more chunks than the window
  const EngineRun disk = DiskRun(tmp, tmp / "model");
  Instance a(tmp, "a", tmp / "model", 1, "", {"--decode-loop", "--max-tokens", "64"});
  auto tokens_decoded = [&](bool serving_only) {
    int n = 0;
    for (const json& line : JsonLines(a.child().Stdout())) {
      if (line.contains("decoded_tokens") && (!serving_only || line["serving"] >= 1)) ++n;
    }
    return n;
  };
  ASSERT_TRUE(testing::WaitFor([&] { return tokens_decoded(false) >= 1; }, 60s))
      << "A never entered its decode loop: " << a.child().Stderr();
  EXPECT_EQ(tokens_decoded(true), 0) << "nothing is served yet";
  Child b(EngineArgv(1, "",
                     {"--model", tmp / "model", "--testing-hold-at", "0", "--testing-hold-file",
                      tmp / "release", "--model-loader-extra-config",
                      SourceConfig({{0, {a.endpoint(0)}}})}),
          tmp / "b");
  ASSERT_TRUE(testing::WaitFor(
      [&] { return b.Stderr().find("holding the load") != std::string::npos; }, 60s))
      << b.Stderr();
  EXPECT_TRUE(testing::WaitFor([&] { return tokens_decoded(true) >= 3; }, 30s))
      << tokens_decoded(false) << " tokens decoded, " << tokens_decoded(true)
      << " of them while B's transfer was held in progress";
  testing::WriteFile(tmp / "release", "");
  EngineRun run{b.Wait(120s), Reports(b.Stdout()), b.Stderr()};
  ExpectSameOutput(run, disk);
  EXPECT_EQ(run.ranks[0]["loaded_from"], a.endpoint(0)) << run.stderr_text;
  ASSERT_EQ(a.Stop(), 0) << a.child().Stderr();
  EXPECT_NE(a.child().Stdout().find("\"served\":1"), std::string::npos) << a.child().Stdout();
}

// --- Fallback: every cause ends in a disk load of that rank and the right output. ---

void ExpectFellBack(const EngineRun& run, int rank, const std::string& reason) {
  ASSERT_TRUE(run.ranks.count(rank)) << run.stderr_text;
  const json& report = run.ranks.at(rank);
  EXPECT_EQ(report["loaded_from"], "disk") << report.dump();
  EXPECT_NE(report.value("fallback_reason", "").find(reason), std::string::npos)
      << "wanted '" << reason << "' in " << report.dump();
  EXPECT_NE(run.stderr_text.find("WARN"), std::string::npos) << run.stderr_text;
}

TEST(FallbackFaultTest, ARankWithoutSourceLoadsFromDiskAndTheOtherFromItsPeer) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  Rendezvous rendezvous(tmp);
  ASSERT_TRUE(rendezvous.ready()) << rendezvous.child().Stderr();
  const EngineRun disk = DiskRun(tmp, tmp / "model", 2);
  Instance a(tmp, "a", tmp / "model", 2, rendezvous.spec());
  EngineRun b = RunEngine(
      tmp, "b",
      EngineArgv(
          2, rendezvous.spec(),
          {"--model", tmp / "model", "--tensor-parallel-size", "2", "--model-loader-extra-config",
           SourceConfig({{0, {a.endpoint(0)}}}, {{"RENDEZVOUS", rendezvous.spec()}})}));
  ExpectSameOutput(b, disk);
  EXPECT_EQ(b.ranks[0]["loaded_from"], a.endpoint(0));
  ExpectFellBack(b, 1, "no SOURCE for rank 1");
}

TEST(FallbackFaultTest, ASourceWithAnotherPartitionIsRefusedNamingTheFieldsAndRanksLoadFromDisk) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  Rendezvous rendezvous(tmp);
  ASSERT_TRUE(rendezvous.ready()) << rendezvous.child().Stderr();
  const EngineRun disk = DiskRun(tmp, tmp / "model", 2);
  Instance a(tmp, "a", tmp / "model", 1, rendezvous.spec());  // TP=1
  EngineRun b = RunEngine(tmp, "b",
                          EngineArgv(2, rendezvous.spec(),
                                     {"--model", tmp / "model", "--tensor-parallel-size", "2",
                                      "--model-loader-extra-config",
                                      SourceConfig({{0, {a.endpoint(0)}}, {1, {a.endpoint(0)}}},
                                                   {{"RENDEZVOUS", rendezvous.spec()}})}));
  ExpectSameOutput(b, disk);
  ExpectFellBack(b, 0, "tp_size");
  ExpectFellBack(b, 1, "tp_rank");
  ASSERT_EQ(a.Stop(), 0);
  EXPECT_NE(a.child().Stdout().find("\"refused\":2"), std::string::npos) << a.child().Stdout();
}

// Nothing listens at the source: the refused connection is known at once, long before the
// register deadline.
TEST(FallbackFaultTest, AnUnreachableSourceFallsBackAtOnce) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  const EngineRun disk = DiskRun(tmp, tmp / "model");
  const auto start = std::chrono::steady_clock::now();
  EngineRun b = RunSingle(tmp, "b",
                          {"--model", tmp / "model", "--model-loader-extra-config",
                           SourceConfig({{0, {"127.0.0.1:9"}}}, {{"REGISTER_TIMEOUT", 120}})});
  EXPECT_LT(std::chrono::steady_clock::now() - start, 60s) << "not the 120 s register deadline";
  ExpectSameOutput(b, disk);
  ExpectFellBack(b, 0, "cannot connect to tcp://127.0.0.1:9: the connection was refused");
}

TEST(FallbackFaultTest, AFrozenSourceMissesTheDeadlineAndTheNextSourceServes) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  const EngineRun disk = DiskRun(tmp, tmp / "model");
  Instance frozen(tmp, "frozen", tmp / "model", 1);
  Instance good(tmp, "good", tmp / "model", 1);
  frozen.child().Signal(SIGSTOP);
  EngineRun b = RunSingle(
      tmp, "b",
      {"--model", tmp / "model", "--model-loader-extra-config",
       SourceConfig({{0, {frozen.endpoint(0), good.endpoint(0)}}}, {{"REGISTER_TIMEOUT", 1}})});
  ExpectSameOutput(b, disk);
  EXPECT_EQ(b.ranks[0]["loaded_from"], good.endpoint(0)) << b.stderr_text;
  // Only the frozen one: disk.
  EngineRun c = RunSingle(tmp, "c",
                          {"--model", tmp / "model", "--model-loader-extra-config",
                           SourceConfig({{0, {frozen.endpoint(0)}}}, {{"REGISTER_TIMEOUT", 1}})});
  ExpectSameOutput(c, disk);
  ExpectFellBack(c, 0, "Timeout: no answer within 1000 ms");
  frozen.child().Signal(SIGCONT);
}

TEST(FallbackFaultTest, ASourceKilledMidTransferFallsBackToDiskWithinTheStallDeadline) {
  TempDir tmp;
  MakeLlama(tmp / "model",
            {"--hidden-size", "512", "--intermediate-size", "1408", "--size-mib", "256"});
  const EngineRun disk = DiskRun(tmp, tmp / "model");
  Instance a(tmp, "a", tmp / "model", 1);
  Child b(
      EngineArgv(1, "",
                 {"--model", tmp / "model", "--log-level", "debug", "--model-loader-extra-config",
                  SourceConfig({{0, {a.endpoint(0)}}}, {{"STALL_TIMEOUT", 3}, {"WINDOW", 1}})}),
      tmp / "b");
  ASSERT_TRUE(testing::WaitFor(
      [&] { return b.Stderr().find("over MPI; receiving") != std::string::npos; }, 60s))
      << b.Stderr();
  a.child().Signal(SIGKILL);
  const auto killed = std::chrono::steady_clock::now();
  EngineRun run{b.Wait(120s), Reports(b.Stdout()), b.Stderr()};
  EXPECT_LT(std::chrono::steady_clock::now() - killed, 60s);
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  ExpectFellBack(run, 0, "tcp://");
  ExpectSameOutput(run, disk);
}

TEST(FallbackFaultTest, ACorruptedSourceFailsTheChecksumAndTheRankLoadsFromDisk) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  const EngineRun disk = DiskRun(tmp, tmp / "model");
  Instance a(tmp, "a", tmp / "model", 1, "", {"--testing-corrupt-served-weights"});
  EngineRun b = RunSingle(tmp, "b",
                          {"--model", tmp / "model", "--model-loader-extra-config",
                           SourceConfig({{0, {a.endpoint(0)}}})});
  ExpectSameOutput(b, disk);
  ExpectFellBack(b, 0, "ChecksumMismatch");
}

TEST(EngineConfigFaultTest, BadExtraConfigStopsStartUpNamingTheKey) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  struct Case {
    std::string config, wanted;
  } cases[] = {
      {R"({"SOURCES": []})", "unknown key 'SOURCES'"},
      {R"({"LISTEN_PORT": "8000"})", "LISTEN_PORT must be an integer"},
      {R"({"LISTEN_PORT": 70000})", "LISTEN_PORT must be an integer in [1, 65535]"},
      {R"({"SOURCE": [{"device_id": 1, "sources": ["127.0.0.1:1"]}]})", "device_id"},
      {R"({"SOURCE": [{"device_id": 0, "sources": ["nohost"]}]})", "not host:port"},
      {R"({"CONFIG_FILE": "/nonexistent.json"})", "CONFIG_FILE /nonexistent.json"},
      {"{not json", "not valid JSON"},
  };
  for (const Case& c : cases) {
    EngineRun run =
        RunSingle(tmp, "bad", {"--model", tmp / "model", "--model-loader-extra-config", c.config});
    EXPECT_EQ(run.exit_code, 2) << c.config;
    EXPECT_NE(run.stderr_text.find(c.wanted), std::string::npos)
        << c.config << " -> " << run.stderr_text;
    EXPECT_TRUE(run.ranks.empty()) << "nothing decoded with a bad config";
  }
}

// Relay fan-out with the engine (docs/usage.md, "A burst of instances"): three instances configured
// with one seed only. The first holds its load after one chunk, so that the others arrive while
// it loads: the seed, at its fan-out limit, redirects the second to the first, which redirects
// the third to the second. All three decode bit for bit as from disk, and each serves afterwards.
TEST(EngineTest, InstancesPointedAtOneSeedFormAChainAndDecodeExactlyAsFromDisk) {
  TempDir tmp;
  MakeLlama(tmp / "model");
  Rendezvous rendezvous(tmp);
  ASSERT_TRUE(rendezvous.ready()) << rendezvous.child().Stderr();
  const EngineRun disk = DiskRun(tmp, tmp / "model");
  Instance seed(tmp, "seed", tmp / "model", 1, rendezvous.spec());
  auto start = [&](const std::string& name, bool hold) {
    json config = {{"SOURCE", json::array({{{"device_id", 0}, {"sources", {seed.endpoint(0)}}}})},
                   {"RENDEZVOUS", rendezvous.spec()},
                   {"OUTPUT_PREFIX", tmp / (name + "-endpoint-")}};
    std::vector<std::string> args = {
        "--model",     tmp / "model",   "--load-format", "netloader", "--model-loader-extra-config",
        config.dump(), "--keep-running"};
    if (hold)
      args.insert(args.end(), {"--testing-hold-at", "0", "--testing-hold-file", tmp / "go"});
    return std::make_unique<Child>(EngineArgv(1, "", args), tmp / name);
  };
  // How many sessions `endpoint` streams now (netloader-client --status).
  auto sessions = [&](const std::string& endpoint) {
    Child status({Bin("netloader-client"), "--status", endpoint, "--json"}, tmp / "status");
    if (status.Wait(30s) != 0) return -1;
    const std::vector<json> lines = JsonLines(status.Stdout());
    return lines.empty() ? -1 : lines.back()["sessions"].get<int>();
  };
  // True once `instance` logged where it relays (into `endpoint`) and streams to one client.
  auto relays_to_one = [&](Child& instance, std::string* endpoint) {
    const std::string err = instance.Stderr();
    const size_t at = err.find("relaying at ");
    if (at == std::string::npos) return false;
    *endpoint = err.substr(at + 12, err.find_first_of(" \n", at + 12) - at - 12);
    return sessions(*endpoint) == 1;
  };
  std::unique_ptr<Child> first = start("first", true);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return first->Stderr().find("holding the load") != std::string::npos; }, 60s))
      << first->Stderr();
  std::unique_ptr<Child> second = start("second", false);
  // The first's relay endpoint: it serves while it loads, at the port it logged.
  std::string first_endpoint;
  ASSERT_TRUE(testing::WaitFor([&] { return relays_to_one(*first, &first_endpoint); }, 60s))
      << first->Stderr() << second->Stderr();
  std::unique_ptr<Child> third = start("third", false);
  // Let go once the third is streaming from the second (the second's one session).
  std::string second_endpoint;
  ASSERT_TRUE(testing::WaitFor([&] { return relays_to_one(*second, &second_endpoint); }, 60s))
      << second->Stderr() << third->Stderr();
  testing::WriteFile(tmp / "go", "");
  std::map<std::string, json> reports;
  for (auto& [name, child] : std::vector<std::pair<std::string, Child*>>{
           {"first", first.get()}, {"second", second.get()}, {"third", third.get()}}) {
    ASSERT_FALSE(testing::WaitForLine(tmp / (name + "-endpoint-0.txt"), 60s).empty())
        << child->Stderr();
    ASSERT_TRUE(testing::WaitFor([&] { return !Reports(child->Stdout()).empty(); }, 60s))
        << child->Stderr();
    reports[name] = Reports(child->Stdout()).at(0);
    EXPECT_EQ(reports[name]["tokens"], disk.ranks.at(0)["tokens"]) << name;
    EXPECT_EQ(reports[name]["logits_digest"], disk.ranks.at(0)["logits_digest"]) << name;
    EXPECT_EQ(reports[name]["relayed"], true) << name;
  }
  EXPECT_EQ(reports["first"]["loaded_from"], seed.endpoint(0));
  EXPECT_EQ(reports["second"]["loaded_from"], first_endpoint);
  EXPECT_EQ(reports["third"]["loaded_from"], second_endpoint);
  // Each goes on serving: a fourth instance loads from the last of the chain.
  EngineRun fourth = RunSingle(tmp, "fourth",
                               {"--model", tmp / "model", "--model-loader-extra-config",
                                SourceConfig({{0, {reports["third"]["endpoint"]}}})});
  ExpectSameOutput(fourth, disk);
  EXPECT_EQ(fourth.ranks[0]["loaded_from"], reports["third"]["endpoint"]);
  for (Child* child : {first.get(), second.get(), third.get()}) {
    child->Signal(SIGTERM);
    EXPECT_EQ(child->Wait(30s), 0) << child->Stderr();
    EXPECT_NE(child->Stdout().find("\"served\":1"), std::string::npos) << child->Stdout();
  }
}

}  // namespace
}  // namespace netloader
