#include "tests/bench/fanout_bench.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "netloader/server.h"
#include "tests/bench/checkpoints.h"
#include "tests/bench/fatal.h"
#include "tests/bench/role_command.h"
#include "tests/bench/samples.h"
#include "tests/bench/usage.h"
#include "tests/bench/workspace.h"
#include "tests/support/test_util.h"

namespace netloader::bench {
namespace {

using json = nlohmann::json;
using testing::Child;
using namespace std::chrono_literals;

class FanoutBench {
 public:
  explicit FanoutBench(Options options) : o_(std::move(options)), ws_(o_.workdir) {}

  int Run();

 private:
  uint64_t TxBytes(int host);
  std::vector<std::string> SeedArgv(const std::string& mode, int k,
                                    const std::string& endpoint_file) const;
  void AddMpiArguments(std::vector<std::string>* argv) const;
  std::string StartSeed(const std::string& mode, int k);
  std::vector<std::string> InstanceArgv(const std::string& mode, int i, const std::string& seed,
                                        const std::string& go) const;
  void StartInstances(const std::string& mode, int k, const std::string& seed,
                      const std::string& go);
  std::vector<double> AwaitSummaries(const std::string& mode, int k, Clock::time_point start,
                                     json* loads);
  json Burst(const std::string& mode, int k);
  void Stop();
  int Report(const std::vector<int>& ks);

  Options o_;
  Workspace ws_;
  std::string bin_ = testing::BinDir();  // the shipped netloader-server and netloader-client
  std::string model_;
  uint64_t bytes_ = 0;
  int bursts_ = 0;
  std::unique_ptr<testing::Hosts> hosts_;
  std::unique_ptr<testing::Rendezvous> rendezvous_;
  std::unique_ptr<testing::TempDir> etcd_dir_;
  std::unique_ptr<testing::EtcdServer> etcd_;  // the cold mode's registry, on the bridge
  std::unique_ptr<Child> seed_;
  std::vector<std::unique_ptr<Child>> instances_;
  Samples samples_;
};

// Without --size-mib, a 256 MiB model of 300 tensors: enough to fill the links for a while,
// small enough for K copies on one machine.
int FanoutBench::Run() {
  const std::string rate = std::to_string(o_.fanout_mbit) + "mbit";
  hosts_ = BuildHosts(std::vector<std::string>(static_cast<size_t>(o_.max_k) + 1, rate));
  SetCleanup([this] {
    Stop();
    etcd_.reset();
    hosts_.reset();
  });
  model_ = PrepareModel(o_.checkpoint, ws_.dir() + "/model",
                        static_cast<uint64_t>((o_.size_given ? o_.size_mib : 256) * (1 << 20)),
                        o_.size_given ? o_.tensors : 300, 11);
  bytes_ = FileDataBytes(model_);
  // With MPI in helpers every server has a private rendezvous: none is shared.
  if (!o_.mpi_helpers) rendezvous_ = ws_.StartRendezvous(hosts_->bridge());
  if (std::find(o_.modes.begin(), o_.modes.end(), "cold") != o_.modes.end()) {
    etcd_dir_ = std::make_unique<testing::TempDir>();
    etcd_ = std::make_unique<testing::EtcdServer>(*etcd_dir_, hosts_->bridge_address());
    if (!etcd_->Start()) Die("etcd did not start: " + etcd_->Log());
  }
  std::vector<int> ks;
  for (int k = 1; k <= o_.max_k; k *= 2) ks.push_back(k);
  std::fprintf(stderr, "fan-out: %d hosts at %d Mbit/s each; model %s; K = 1..%d\n", o_.max_k + 1,
               o_.fanout_mbit, Human(bytes_).c_str(), ks.back());
  for (int rep = 0; rep < o_.reps; ++rep) {
    for (const std::string& mode : o_.modes) {
      for (int k : ks) {
        std::fprintf(stderr, "repetition %d/%d: %s, K = %d\n", rep + 1, o_.reps, mode.c_str(), k);
        samples_.Add(mode + "_" + std::to_string(k), Burst(mode, k));
      }
    }
  }
  Stop();
  SetCleanup(nullptr);
  return Report(ks);
}

// Bytes host `host`'s NIC has transmitted.
uint64_t FanoutBench::TxBytes(int host) {
  Child cat(hosts_->On(host, {"cat", "/sys/class/net/nlv/statistics/tx_bytes"}), ws_.dir() + "/tx");
  if (cat.Wait(30s) != 0) Die("cannot read host " + std::to_string(host) + "'s NIC counters");
  return std::stoull(cat.Stdout());
}

// The storage host, or a netloader-server that relays (--fanout) or serves everyone (0).
std::vector<std::string> FanoutBench::SeedArgv(const std::string& mode, int k,
                                               const std::string& endpoint_file) const {
  const std::string address = hosts_->address(0);
  if (mode == "storage" || mode == "cold") {
    return {ws_.self(), "--role", "storage-serve",   "--model",    model_,
            "--listen", address,  "--endpoint-file", endpoint_file};
  }
  std::vector<std::string> argv = {bin_ + "/netloader-server",
                                   "--model",
                                   model_,
                                   "--listen",
                                   "tcp://" + address + ":7000",
                                   "--endpoint-file",
                                   endpoint_file,
                                   "--interface",
                                   "nlv",
                                   "--log-level",
                                   "warn",
                                   "--max-clients",
                                   std::to_string(std::max(4, k)),
                                   "--fanout",
                                   mode == "relay" ? std::to_string(o_.tree_fanout) : "0",
                                   "--chunk-mib",
                                   ChunkMibArgument(o_.chunk_bytes),
                                   "--window",
                                   std::to_string(o_.window)};
  AddMpiArguments(&argv);
  return argv;
}

// A shared rendezvous, or MPI in helpers with a private one each.
void FanoutBench::AddMpiArguments(std::vector<std::string>* argv) const {
  if (o_.mpi_helpers) {
    argv->push_back("--mpi-helpers");
  } else {
    argv->insert(argv->end(), {"--rendezvous", rendezvous_->spec()});
  }
}

// The seed on host 0; waits until it listens.
std::string FanoutBench::StartSeed(const std::string& mode, int k) {
  const std::string endpoint_file = ws_.dir() + "/seed-endpoint";
  std::filesystem::remove(endpoint_file);
  seed_ =
      std::make_unique<Child>(hosts_->On(0, SeedArgv(mode, k, endpoint_file)), ws_.dir() + "/seed");
  const std::string endpoint = testing::WaitForLine(endpoint_file, 120s);
  if (endpoint.empty()) Die("the seed did not start: " + seed_->Stderr());
  return endpoint;
}

// Instance `i`: a storage reader, or a netloader-client that verifies every byte (and, relaying,
// serves on its own host).
std::vector<std::string> FanoutBench::InstanceArgv(const std::string& mode, int i,
                                                   const std::string& seed,
                                                   const std::string& go) const {
  if (mode == "storage") {
    return {ws_.self(), "--role", "storage-read", "--model", model_,
            "--source", seed,     "--start-file", go};
  }
  if (mode == "cold") {
    std::vector<std::string> argv = {ws_.self(),
                                     "--role",
                                     "cold-start",
                                     "--model",
                                     model_,
                                     "--source",
                                     seed,
                                     "--start-file",
                                     go,
                                     "--registry",
                                     etcd_->url() + "/burst-" + std::to_string(bursts_),
                                     "--listen",
                                     "tcp://" + hosts_->address(i) + ":7000",
                                     "--relay-fanout",
                                     std::to_string(o_.tree_fanout),
                                     "--interface",
                                     "nlv",
                                     "--window",
                                     std::to_string(o_.window),
                                     "--chunk-mib",
                                     ChunkMibArgument(o_.chunk_bytes)};
    AddMpiArguments(&argv);
    return argv;
  }
  std::vector<std::string> argv = {bin_ + "/netloader-client",
                                   "--model",
                                   model_,
                                   "--source",
                                   seed,
                                   "--verify-only",
                                   "--interface",
                                   "nlv",
                                   "--json",
                                   "--log-level",
                                   "warn",
                                   "--testing-start-file",
                                   go,
                                   "--window",
                                   std::to_string(o_.window)};
  AddMpiArguments(&argv);
  if (mode == "relay") {
    argv.insert(argv.end(), {"--serve", "tcp://" + hosts_->address(i) + ":7000", "--fanout",
                             std::to_string(o_.tree_fanout)});
  }
  return argv;
}

// K instances on hosts 1..K, each started and made ready (MPI up, memory allocated). On real
// hosts the K start-ups run in parallel; here they share two cores, so they are not part of T.
void FanoutBench::StartInstances(const std::string& mode, int k, const std::string& seed,
                                 const std::string& go) {
  for (int i = 1; i <= k; ++i) {
    // Logs of their own: a reused name could show the last burst's summary.
    instances_.push_back(std::make_unique<Child>(hosts_->On(i, InstanceArgv(mode, i, seed, go)),
                                                 ws_.dir() + "/" + mode + "-k" + std::to_string(k) +
                                                     "-" + std::to_string(bursts_) + "-" +
                                                     std::to_string(i)));
  }
  for (auto& instance : instances_) {
    if (!testing::WaitFor([&] { return instance->Stderr().find("ready") != std::string::npos; },
                          300s)) {
      Die(mode + " instance did not get ready: " + instance->Stderr());
    }
  }
}

// Each instance prints its summary once it holds every byte (a relay then goes on serving):
// the seconds from `start` until each did, and their summaries in `loads`.
std::vector<double> FanoutBench::AwaitSummaries(const std::string& mode, int k,
                                                Clock::time_point start, json* loads) {
  std::vector<double> done(static_cast<size_t>(k), -1);
  const auto deadline = Clock::now() + 600s;
  for (int left = k; left > 0;) {
    if (Clock::now() > deadline) Die(mode + " K=" + std::to_string(k) + " did not finish");
    for (int i = 0; i < k; ++i) {
      if (done[i] >= 0) continue;
      Child& instance = *instances_[i];
      const std::vector<json> lines = testing::JsonLines(instance.Stdout());
      if (lines.empty()) {
        if (!instance.Running()) Die(mode + " instance failed: " + instance.Stderr());
        continue;
      }
      done[i] = Since(start);
      if (lines[0].value("ok", false) != true) Die(mode + " instance failed: " + lines[0].dump());
      loads->push_back(lines[0]);
      --left;
    }
    std::this_thread::sleep_for(10ms);  // polling the summaries; bounded by the deadline
  }
  return done;
}

// K instances let go at once: until the last one verified every byte.
json FanoutBench::Burst(const std::string& mode, int k) {
  const std::string seed = StartSeed(mode, k);
  const std::string go = ws_.dir() + "/go";
  std::filesystem::remove(go);
  ++bursts_;
  StartInstances(mode, k, seed, go);
  const uint64_t tx_before = TxBytes(0);
  const auto start = Clock::now();
  testing::WriteFile(go, "");
  json loads = json::array();
  const std::vector<double> done = AwaitSummaries(mode, k, start, &loads);
  const double egress = static_cast<double>(TxBytes(0) - tx_before) / bytes_;
  Stop();
  json out = {{"seconds", *std::max_element(done.begin(), done.end())},
              {"first_seconds", *std::min_element(done.begin(), done.end())},
              {"seed_egress_models", egress},
              {"instances", loads}};
  std::fprintf(stderr, "  %.2f s, seed egress %.2f models\n", out["seconds"].get<double>(), egress);
  return out;
}

// Ends the instances and the seed of a burst.
void FanoutBench::Stop() {
  for (auto& instance : instances_) instance->Signal(SIGTERM);
  for (auto& instance : instances_) instance->Wait(30s);
  instances_.clear();
  if (seed_) {
    seed_->Signal(SIGTERM);
    seed_->Wait(30s);
    seed_.reset();
  }
}

int FanoutBench::Report(const std::vector<int>& ks) {
  json out;
  out["config"] = {{"bytes", bytes_},
                   {"host_mbit", o_.fanout_mbit},
                   {"reps", o_.reps},
                   {"chunk_bytes", ServerOptions{}.chunk_bytes},
                   {"fanout", o_.tree_fanout}};
  const double link = o_.fanout_mbit * 1e6 / 8;
  std::printf(
      "\nfan-out: one seed, K instances started at once, every host's NIC at %d Mbit/s; "
      "%s (one copy over one link: %.2f s)\n",
      o_.fanout_mbit, Human(bytes_).c_str(), bytes_ / link);
  std::printf("%-8s %3s %10s %12s %18s\n", "mode", "K", "T(K) s", "T(K)/T(1)",
              "seed egress, models");
  out["fanout"] = json::array();
  for (const std::string& mode : o_.modes) {
    for (int k : ks) {
      const std::string name = mode + "_" + std::to_string(k);
      const double seconds = samples_.Of(name, "seconds").median;
      const double ratio = samples_.PairedRatio(name, mode + "_1", "seconds");
      const double egress = samples_.Of(name, "seed_egress_models").median;
      std::printf("%-8s %3d %10.2f %12.2f %18.2f\n", mode.c_str(), k, seconds, ratio, egress);
      out["fanout"].push_back({{"k", k},
                               {"mode", mode},
                               {"seconds", seconds},
                               {"ratio_to_k1", ratio},
                               {"seed_egress_models", egress},
                               {"samples", samples_.All(name)}});
    }
  }
  WriteReport(o_.json_path, out);
  return 0;
}

}  // namespace

int RunFanoutBench(const Options& options) { return FanoutBench(options).Run(); }

}  // namespace netloader::bench
