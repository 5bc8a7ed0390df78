// netloader-soak: many loads from one server, and bursts of clients over its limit, with the
// server's resources measured as they go. The server runs in this process (its MPI in a helper
// process with a private rendezvous, the shared secret); every client is a separate
// netloader-client process that must verify every chunk. After a warm-up, the server's open file
// descriptors and threads are sampled with the server idle and must stay where they were; its
// resident memory, less the staging rings it keeps for reuse (ServerStats::staging_bytes,
// bounded by its options), may grow by at most --rss-margin KiB over the whole run. Open MPI
// keeps ~31 KiB per connected client until MPI_Finalize (DESIGN.md); that lives in the MPI
// helper, which the server replaces every 100 sessions, so the helpers' memory is bounded too
// (--helper-growth). Prints one JSON report; exit 0 only when every load was
// verified and nothing grew. CI runs it briefly (ctest label `soak`); run it longer by hand:
//   build/bin/netloader-soak --loads 2000 --bursts 20

#include <dirent.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "examples/checkpoint_gen.h"
#include "netloader/logging.h"
#include "netloader/safetensors.h"
#include "netloader/secret.h"
#include "netloader/server.h"
#include "tests/support/test_util.h"

namespace {

using namespace std::chrono_literals;
using netloader::testing::Child;
using Clock = std::chrono::steady_clock;

struct Resources {
  int64_t rss_kib = 0;
  int64_t staging_kib = 0;  // of rss_kib: staging rings the server keeps for reuse
  int threads = 0;
  int fds = 0;
  int helpers = 0;         // MPI helper processes of this process
  int64_t helper_kib = 0;  // their resident memory
  int64_t own_kib() const { return rss_kib - staging_kib; }
  nlohmann::json Json() const {
    return {{"rss_kib", rss_kib}, {"staging_kib", staging_kib}, {"threads", threads},
            {"fds", fds},         {"helpers", helpers},         {"helper_kib", helper_kib}};
  }
};

int64_t StatusField(const std::string& field, const std::string& process = "self") {
  std::ifstream in("/proc/" + process + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return -1;
}

Resources Sample(const netloader::Server& server) {
  Resources r;
  r.rss_kib = StatusField("VmRSS");
  r.staging_kib = static_cast<int64_t>(server.stats().staging_bytes >> 10);
  r.threads = static_cast<int>(StatusField("Threads"));
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(dir)) r.fds += e->d_name[0] != '.';
    closedir(dir);
    --r.fds;  // the directory's own descriptor
  }
  for (pid_t helper : netloader::testing::ChildrenNamed(getpid(), "netloader-mpi-h")) {
    ++r.helpers;
    // All of it, shared memory included: a staging ring a helper kept mapped after its channel
    // ended would show here.
    r.helper_kib += StatusField("VmRSS", std::to_string(helper));
  }
  return r;
}

struct Options {
  int loads = 150;
  int bursts = 1;
  int burst_clients = 16;
  int limit = 4;
  int tensors = 64;
  int size_mib = 16;
  int64_t rss_margin_kib = 1 << 10;
  int64_t rss_per_load_kib = 0;
  int64_t helper_growth_kib = 64 << 10;
  int fd_margin = 4;
  int thread_margin = 2;
};

class Soak {
 public:
  Soak(std::string model, std::string endpoint)
      : model_(std::move(model)), endpoint_(std::move(endpoint)) {}

  // Starts `n` clients at once and waits for all; counts those that did not verify the model.
  int Run(int n, const std::string& label) {
    std::vector<std::unique_ptr<Child>> clients;
    for (int i = 0; i < n; ++i) {
      clients.push_back(std::make_unique<Child>(
          std::vector<std::string>{netloader::testing::BinDir() + "/netloader-client", "--json",
                                   "--source", endpoint_, "--model", model_, "--verify-only",
                                   "--busy-timeout", "300"},
          log_dir_ + "/" + label + "-" + std::to_string(i)));
    }
    int failed = 0;
    for (auto& client : clients) {
      const int code = client->Wait(600s);
      const std::vector<nlohmann::json> lines = netloader::testing::JsonLines(client->Stdout());
      const bool verified = code == 0 && !lines.empty() && lines.back().value("verified", false);
      if (!verified) {
        ++failed;
        std::fprintf(stderr, "netloader-soak: a %s client failed (exit %d): %s\n", label.c_str(),
                     code, client->Stderr().c_str());
      }
      ++loads_;
    }
    return failed;
  }

  void set_log_dir(const std::string& dir) { log_dir_ = dir; }
  int loads() const { return loads_; }

 private:
  std::string model_;
  std::string endpoint_;
  std::string log_dir_;
  int loads_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "netloader-soak: hundreds of sequential loads from one server and bursts of clients over "
      "its limit, every load verified; checks that the server's memory, file descriptors, "
      "threads stay flat, and its MPI helpers' memory bounded."};
  Options o;
  std::string json_path;
  app.add_option("--loads", o.loads, "Sequential loads measured")->capture_default_str();
  app.add_option("--bursts", o.bursts, "Bursts measured after them")->capture_default_str();
  app.add_option("--burst-clients", o.burst_clients, "Clients started at once in a burst")
      ->capture_default_str();
  app.add_option("--limit", o.limit, "The server's concurrent-client limit")->capture_default_str();
  app.add_option("--tensors", o.tensors, "Tensors of the generated model")->capture_default_str();
  app.add_option("--size-mib", o.size_mib, "Size of the generated model")->capture_default_str();
  app.add_option("--rss-margin", o.rss_margin_kib,
                 "KiB of resident memory (less staging rings) the server may gain over the run")
      ->capture_default_str();
  app.add_option("--rss-per-load", o.rss_per_load_kib,
                 "KiB per load the server may gain besides (for experiments)")
      ->capture_default_str();
  app.add_option("--helper-growth", o.helper_growth_kib,
                 "KiB of resident memory the MPI helpers may gain over the first idle sample")
      ->capture_default_str();
  app.add_option("--json", json_path, "Also write the report here");
  CLI11_PARSE(app, argc, argv);
  netloader::SetLogLevel(netloader::LogLevel::kWarn);  // not a line per client served

  netloader::testing::TempDir tmp;
  netloader::examples::CheckpointSpec spec;
  spec.total_bytes = static_cast<uint64_t>(o.size_mib) << 20;
  spec.tensors = o.tensors;
  netloader::Status generated = netloader::examples::GenerateCheckpoint(tmp / "model", spec);
  auto layout = netloader::ReadCheckpointLayout(tmp / "model");
  auto model = layout.ok() ? netloader::HostModel::Load(*layout)
                           : netloader::Result<netloader::HostModel>(layout.status());
  auto secret = netloader::LoadOrCreateSecret(netloader::DefaultSecretPath());
  if (!generated.ok() || !model.ok() || !secret.ok()) {
    std::fprintf(stderr, "netloader-soak: cannot set up: %s %s\n", generated.ToString().c_str(),
                 model.status().ToString().c_str());
    return 2;
  }
  netloader::ServerOptions options;
  options.max_concurrent_transfers = o.limit;
  options.transport.mpi_helpers = true;  // what keeps the server flat
  options.busy_retry_hint = 100ms;
  options.secret = *secret;
  auto server = netloader::Server::Start(options, model->view());
  if (!server.ok()) {
    std::fprintf(stderr, "netloader-soak: %s\n", server.status().ToString().c_str());
    return 2;
  }
  Soak soak(tmp / "model", (*server)->endpoint());
  soak.set_log_dir(tmp.path());
  // Samples once the server is idle: every session reaped, every slot free.
  auto idle_sample = [&] {
    netloader::testing::WaitFor([&] { return (*server)->stats().active_transfers == 0; }, 60s);
    return Sample(**server);
  };

  const auto start = Clock::now();
  int failed = soak.Run(1, "warmup");
  for (int i = 0; i < 4; ++i) failed += soak.Run(1, "warmup");
  failed += soak.Run(o.burst_clients, "warmup-burst");
  const Resources before = idle_sample();
  const auto measured = Clock::now();
  nlohmann::json series = nlohmann::json::array();  // the server's resources as the loads go on
  for (int i = 0; i < o.loads; ++i) {
    failed += soak.Run(1, "sequential");
    if ((i + 1) % 25 == 0) series.push_back({{"loads", i + 1}, {"after", idle_sample().Json()}});
  }
  const Resources after_sequential = idle_sample();
  const uint64_t busy_before = (*server)->stats().busy;
  for (int b = 0; b < o.bursts; ++b) {
    failed += soak.Run(o.burst_clients, "burst");
    series.push_back({{"bursts", b + 1}, {"after", idle_sample().Json()}});
  }
  const Resources after = idle_sample();
  const double seconds = std::chrono::duration<double>(Clock::now() - measured).count();
  const netloader::ServerStats stats = (*server)->stats();
  (*server)->Stop();

  std::vector<std::string> grew;
  const int sequential_loads = o.loads, all_loads = o.loads + o.bursts * o.burst_clients;
  for (const auto& [r, loads] :
       {std::pair(after_sequential, sequential_loads), std::pair(after, all_loads)}) {
    if (r.own_kib() > before.own_kib() + o.rss_margin_kib + loads * o.rss_per_load_kib) {
      grew.push_back("rss_kib");
    }
    if (r.fds > before.fds + o.fd_margin) grew.push_back("fds");
    if (r.threads > before.threads + o.thread_margin) grew.push_back("threads");
    if (r.helper_kib > before.helper_kib + o.helper_growth_kib) grew.push_back("helper_kib");
    if (r.helpers > 2) grew.push_back("helpers");  // the current one and at most one retiring
  }
  const double rss_per_load_kib =
      sequential_loads > 0
          ? static_cast<double>(after_sequential.own_kib() - before.own_kib()) / sequential_loads
          : 0;
  const bool busy_seen = o.burst_clients <= o.limit || o.bursts == 0 || stats.busy > busy_before;
  const bool all_served =
      stats.clients_served == static_cast<uint64_t>(soak.loads()) && stats.clients_failed == 0;
  nlohmann::json report = {
      {"loads", soak.loads()},
      {"measured_loads", o.loads + o.bursts * o.burst_clients},
      {"failed_loads", failed},
      {"server",
       {{"served", stats.clients_served},
        {"failed", stats.clients_failed},
        {"busy_answers", stats.busy},
        {"refused", stats.refused}}},
      {"burst", {{"clients", o.burst_clients}, {"limit", o.limit}, {"bursts", o.bursts}}},
      {"model", {{"tensors", o.tensors}, {"bytes", model->view().total_bytes()}}},
      {"seconds", seconds},
      {"total_seconds", std::chrono::duration<double>(Clock::now() - start).count()},
      {"before", before.Json()},
      {"after_sequential", after_sequential.Json()},
      {"after", after.Json()},
      {"series", series},
      {"rss_per_sequential_load_kib", rss_per_load_kib},
      {"margins",
       {{"rss_kib", o.rss_margin_kib},
        {"rss_per_load_kib", o.rss_per_load_kib},
        {"helper_kib", o.helper_growth_kib},
        {"fds", o.fd_margin},
        {"threads", o.thread_margin}}},
      {"grew", grew},
      {"ok", failed == 0 && grew.empty() && busy_seen && all_served}};
  std::printf("%s\n", report.dump().c_str());
  if (!json_path.empty()) std::ofstream(json_path) << report.dump(2) << "\n";
  return report["ok"].get<bool>() ? 0 : 1;
}
