#include "tests/bench/hosts_bench.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tests/bench/checkpoints.h"
#include "tests/bench/fatal.h"
#include "tests/bench/role_command.h"
#include "tests/bench/samples.h"
#include "tests/bench/workspace.h"
#include "tests/support/test_util.h"

namespace netloader::bench {
namespace {

using json = nlohmann::json;
using testing::Child;
using namespace std::chrono_literals;

constexpr int kSources = 3;
constexpr int kClient = kSources;  // the client host's index

class HostsBench {
 public:
  explicit HostsBench(Options options) : o_(std::move(options)), ws_(o_.workdir) {}

  int Run();

 private:
  std::vector<ServeRole> StartServers();
  json RunOn(int host, const std::vector<std::string>& argv, const std::string& name);
  json RawAcross();
  json LoadFrom(int stripe);
  int Report(uint64_t bytes);

  Options o_;
  Workspace ws_;
  std::unique_ptr<testing::Hosts> hosts_;
  std::unique_ptr<testing::Rendezvous> rendezvous_;
  RoleCommand command_;
  std::string model_;
  std::vector<std::string> endpoints_;  // one per source host
  Samples samples_;
};

int HostsBench::Run() {
  const std::string rate = std::to_string(o_.host_mbit) + "mbit";
  hosts_ = BuildHosts({rate, rate, rate, std::to_string(4 * o_.host_mbit) + "mbit"});
  SetCleanup([this] { hosts_.reset(); });
  model_ = PrepareModel(o_.checkpoint, ws_.dir() + "/model",
                        static_cast<uint64_t>(o_.size_mib * (1 << 20)), o_.tensors, 7);
  rendezvous_ = ws_.StartRendezvous(hosts_->bridge());
  command_ = {ws_.self(), rendezvous_->spec(), o_.chunk_bytes, o_.window, "nlv", o_.mpi_helpers};
  std::vector<ServeRole> servers = StartServers();
  const uint64_t bytes = FileDataBytes(model_);
  std::fprintf(stderr, "hosts: 3 sources at %d Mbit/s, a client at %d Mbit/s; model %s\n",
               o_.host_mbit, 4 * o_.host_mbit, Human(bytes).c_str());
  for (int rep = 0; rep < o_.reps; ++rep) {
    std::fprintf(stderr, "repetition %d/%d\n", rep + 1, o_.reps);
    samples_.Add("raw_mpi", RawAcross());
    for (int s = 1; s <= kSources; ++s) samples_.Add("stripe_" + std::to_string(s), LoadFrom(s));
  }
  servers.clear();
  SetCleanup(nullptr);
  return Report(bytes);
}

// A serve role on each source host, listening on its address; one directory per host (the
// serve role writes its pid file next to its endpoint file).
std::vector<ServeRole> HostsBench::StartServers() {
  std::vector<ServeRole> servers;
  for (int h = 0; h < kSources; ++h) {
    servers.push_back(StartServeRole(
        command_, ws_.dir() + "/host" + std::to_string(h), {model_},
        {"--listen", "tcp://" + hosts_->address(h) + ":0"}, "server on host " + std::to_string(h),
        [&](std::vector<std::string> argv) { return hosts_->On(h, std::move(argv)); }));
    endpoints_.push_back(servers.back().endpoints.at(0));
  }
  return servers;
}

json HostsBench::RunOn(int host, const std::vector<std::string>& argv, const std::string& name) {
  return RunRoleChild(hosts_->On(host, argv), ws_.dir() + "/" + name, name, 600s);
}

// Raw MPI from host 0 to the client host: the capped link's ceiling for one stream.
json HostsBench::RawAcross() {
  const std::string port_file = ws_.dir() + "/raw-port";
  std::filesystem::remove(port_file + ".0");
  Child sender(hosts_->On(0, RawSendArgv(command_, model_, port_file, 1)), ws_.dir() + "/raw-send");
  json out = RunOn(kClient, RawRecvArgv(command_, model_, port_file, 0), "raw-recv");
  if (sender.Wait(120s) != 0) Die("raw sender failed: " + sender.Stderr());
  return WithRate(std::move(out));
}

// netloader on the client host from the first `stripe` source hosts at once, MPI started
// beforehand (as against raw MPI, whose start-up is not timed either).
json HostsBench::LoadFrom(int stripe) {
  LoadKind kind;
  kind.stripe = stripe;
  const std::vector<std::string> sources(endpoints_.begin(), endpoints_.begin() + stripe);
  return WithRate(RunOn(kClient, LoadArgv(command_, model_, sources, kind), "load"));
}

int HostsBench::Report(uint64_t bytes) {
  const double cap_gbps = o_.host_mbit / 8.0 / 1000;  // GB/s of one source's NIC
  json out;
  out["config"] = {{"bytes", bytes},
                   {"host_mbit", o_.host_mbit},
                   {"client_mbit", 4 * o_.host_mbit},
                   {"chunk_bytes", o_.chunk_bytes},
                   {"window", o_.window},
                   {"reps", o_.reps}};
  std::printf(
      "\nacross simulated hosts: sources capped at %d Mbit/s (%.3f GB/s), the client at "
      "%d Mbit/s; %s\n",
      o_.host_mbit, cap_gbps, 4 * o_.host_mbit, Human(bytes).c_str());
  std::printf("%-34s %9s %12s %12s\n", "measurement (GB/s, median)", "GB/s", "vs raw MPI",
              "vs S x cap");
  const double raw = samples_.Of("raw_mpi", "gbps").median;
  std::printf("%-34s %9.3f %11.0f%% %11.0f%%\n", "raw MPI across one capped link", raw, 100.0,
              100 * raw / cap_gbps);
  out["results"]["raw_mpi"] = {{"gbps_median", raw}, {"samples", samples_.All("raw_mpi")}};
  for (int s = 1; s <= kSources; ++s) {
    const std::string name = "stripe_" + std::to_string(s);
    const double gbps = samples_.Of(name, "gbps").median;
    const double vs_raw = samples_.PairedRatio(name, "raw_mpi");
    std::printf("%-34s %9.3f %11.0f%% %11.0f%%\n",
                ("netloader, " + std::to_string(s) + " source" + (s > 1 ? "s" : "")).c_str(), gbps,
                100 * vs_raw, 100 * gbps / (s * cap_gbps));
    out["results"][name] = {{"gbps_median", gbps},
                            {"vs_raw", vs_raw},
                            {"vs_caps", gbps / (s * cap_gbps)},
                            {"samples", samples_.All(name)}};
  }
  WriteReport(o_.json_path, out);
  return 0;
}

}  // namespace

int RunHostsBench(const Options& options) { return HostsBench(options).Run(); }

}  // namespace netloader::bench
