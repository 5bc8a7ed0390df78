#include "tests/bench/local_bench.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tests/bench/checkpoints.h"
#include "tests/bench/fatal.h"
#include "tests/bench/local_report.h"
#include "tests/bench/machine.h"
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

class LocalBench {
 public:
  explicit LocalBench(Options options) : o_(std::move(options)), ws_(o_.workdir) {}

  int Run();

 private:
  int RunDisk();
  using Rows = std::vector<std::pair<std::string, std::function<json()>>>;

  void Prepare();
  void StartServer();
  Rows LoadRows();
  void RunRotated(const Rows& rows);
  void ConcurrentRows();
  void OverheadRows();
  void ChunkRows();

  json Load(const std::string& model, const std::vector<std::string>& sources,
            const LoadKind& kind);
  json Concurrent(int k);
  json RawStreams(int k);
  json Disk(const std::string& role, bool cold);
  json Output(bool in_memory, bool resumed);
  static json Aggregate(std::vector<std::unique_ptr<Child>>& children, const std::string& what);
  json RunChild(const std::vector<std::string>& argv, const std::string& name) const;
  void StopServer();
  pid_t server_pid() const;
  std::vector<int> Ks() const {
    return o_.quick ? std::vector<int>{1, 2} : std::vector<int>{1, 2, 4};
  }

  Options o_;
  Workspace ws_;
  RoleCommand command_;
  Samples samples_;
  std::string big_;
  const std::vector<int> tiny_counts_ = {4, 1004, 4004};
  std::vector<std::string> tiny_;  // models of tiny_counts_ tensors, for the overhead rows
  std::unique_ptr<testing::Rendezvous> rendezvous_;
  ServeRole server_;  // every model, one endpoint each: big_ first, then tiny_
};

int LocalBench::Run() {
  if (o_.disk) return RunDisk();
  Prepare();
  StartServer();
  std::vector<std::pair<uint64_t, uint64_t>> tensors;
  LocalRun run;
  run.bytes = FileDataBytes(big_, &tensors);
  run.tensors = tensors.size();
  run.ks = Ks();
  run.tiny_counts = tiny_counts_;
  std::fprintf(stderr, "model: %s (%s), %zu tensors; %d repetitions\n", big_.c_str(),
               Human(run.bytes).c_str(), run.tensors, o_.reps);
  RunRotated(LoadRows());
  if (!o_.focus) {
    run.server_rss_before_kib = ProcessStatusKiB(server_pid(), "VmRSS:");
    ConcurrentRows();
    run.server_hwm_kib = ProcessStatusKiB(server_pid(), "VmHWM:");
    OverheadRows();
    ChunkRows();
  }
  StopServer();
  return ReportLocal(o_, samples_, run);
}

// --disk: the four disk rows alone, and how netloader's disk load compares with cat and dd.
int LocalBench::RunDisk() {
  big_ = PrepareModel(o_.checkpoint, ws_.dir() + "/model",
                      static_cast<uint64_t>(o_.size_mib * (1 << 20)), o_.tensors, 7);
  command_ = {ws_.self(), "", o_.chunk_bytes, o_.window, "", false};
  const uint64_t bytes = FileDataBytes(big_);
  std::fprintf(stderr, "model: %s (%s); %d repetitions\n", big_.c_str(), Human(bytes).c_str(),
               o_.reps);
  const json machine = MachineRecord(o_.chunk_bytes);
  RunRotated({{"disk_warm", [this] { return Disk("disk", false); }},
              {"cat_warm", [this] { return Disk("disk-cat", false); }},
              {"disk_cold", [this] { return Disk("disk", true); }},
              {"dd_cold", [this] { return Disk("disk-dd", true); }}});
  PrintMachine(machine);
  json out = {{"machine", machine}, {"bytes", bytes}, {"results", json::object()}};
  std::printf("\n%-30s %9s %9s %9s\n", "disk (GB/s)", "median", "min", "max");
  for (const auto& [row, label] :
       std::vector<std::pair<std::string, std::string>>{{"disk_warm", "netloader, page cache"},
                                                        {"cat_warm", "cat, page cache"},
                                                        {"disk_cold", "netloader, cold"},
                                                        {"dd_cold", "dd bs=4M, cold"}}) {
    const Samples::Stat s = samples_.Of(row, "gbps");
    std::printf("%-30s %9.2f %9.2f %9.2f\n", label.c_str(), s.median, s.min, s.max);
    out["results"][row] = {{"gbps_median", s.median}, {"samples", samples_.All(row)}};
  }
  out["summary"] = json::object();
  ReportDiskVsTools(samples_, &out["summary"]);
  WriteReport(o_.json_path, out);
  return 0;
}

void LocalBench::Prepare() {
  big_ = PrepareModel(o_.checkpoint, ws_.dir() + "/model",
                      static_cast<uint64_t>(o_.size_mib * (1 << 20)), o_.tensors, 7);
  for (int count : tiny_counts_) {
    // The same bytes for every count (64 B per tensor at the largest), so the growth is
    // per tensor: a 256 KiB message costs MPI ~3 ms more than a 260-byte one (rendezvous
    // protocol), and fresh pages cost per byte; neither is netloader's per-tensor work.
    const std::string path = ws_.dir() + "/tiny" + std::to_string(count);
    GenerateModel(path, 64ull * tiny_counts_.back(), count);
    tiny_.push_back(path);
  }
}

void LocalBench::StartServer() {
  rendezvous_ = ws_.StartRendezvous("lo");
  command_ = {ws_.self(), rendezvous_->spec(), o_.chunk_bytes, o_.window, "", o_.mpi_helpers};
  std::vector<std::string> models = {big_};
  models.insert(models.end(), tiny_.begin(), tiny_.end());
  server_ = StartServeRole(command_, ws_.dir(), models, {}, "server");
}

// The rows every repetition runs; --focus: raw MPI and MPI started beforehand, checksums on and
// off, received in place.
LocalBench::Rows LocalBench::LoadRows() {
  const std::string& endpoint = server_.endpoints[0];
  LoadKind no_checksum, direct, end_to_end, overlap, adopt;
  no_checksum.verify = false;
  direct.direct = true;
  end_to_end.preinit = overlap.preinit = adopt.preinit = false;
  overlap.overlap = true;
  adopt.adopt = true;
  // A load of the big model from the one server, as `kind` says.
  auto load = [this, endpoint](const LoadKind& kind) {
    return [this, endpoint, kind] { return Load(big_, {endpoint}, kind); };
  };
  Rows rows = {{"raw_mpi", [this] { return RawStreams(1); }},
               {"netloader_preinit", load(LoadKind())},
               {"netloader_no_checksum", load(no_checksum)},
               {"netloader_direct", load(direct)}};
  if (!o_.focus) {
    rows.push_back({"netloader", load(end_to_end)});
    rows.push_back({"netloader_overlap", load(overlap)});
    rows.push_back({"netloader_adopt", load(adopt)});
    rows.push_back({"disk_warm", [this] { return Disk("disk", false); }});
    rows.push_back({"disk_cold", [this] { return Disk("disk", true); }});
    rows.push_back({"cat_warm", [this] { return Disk("disk-cat", false); }});
    rows.push_back({"dd_cold", [this] { return Disk("disk-dd", true); }});
    rows.push_back({"output_streamed", [this] { return Output(false, false); }});
    rows.push_back({"output_in_memory", [this] { return Output(true, false); }});
    rows.push_back({"output_resumed", [this] { return Output(false, true); }});
  }
  return rows;
}

// Each repetition runs every row once, in an order rotated by one per repetition, so that what
// one run leaves behind (the raw pair frees 2 GiB as it exits) does not always fall on the same
// next row.
void LocalBench::RunRotated(const Rows& rows) {
  for (int rep = 0; rep < o_.reps; ++rep) {
    std::fprintf(stderr, "repetition %d/%d\n", rep + 1, o_.reps);
    for (size_t r = 0; r < rows.size(); ++r) {
      const auto& [name, run] = rows[(r + static_cast<size_t>(rep)) % rows.size()];
      samples_.Add(name, run());
    }
  }
}

void LocalBench::ConcurrentRows() {
  for (int k : Ks()) {
    for (int rep = 0; rep < std::max(1, o_.reps / 2); ++rep) {
      std::fprintf(stderr, "%d concurrent clients, repetition %d\n", k, rep + 1);
      // Alternating which goes first, for the same reason as the rotation above.
      if (rep % 2 == 0) samples_.Add("raw_mpi_x" + std::to_string(k), RawStreams(k));
      samples_.Add("netloader_x" + std::to_string(k), Concurrent(k));
      if (rep % 2 == 1) samples_.Add("raw_mpi_x" + std::to_string(k), RawStreams(k));
    }
  }
}

void LocalBench::OverheadRows() {
  for (int rep = 0; rep < o_.reps; ++rep) {
    for (size_t t = 0; t < tiny_.size(); ++t) {
      samples_.Add("overhead_" + std::to_string(tiny_counts_[t]),
                   Load(tiny_[t], {server_.endpoints[t + 1]}, LoadKind()));
    }
  }
}

// Chunk-granular loads: resume after the first source is killed at half the load, against a
// clean load from the same two sources; a delta refresh of an older copy in which about 2 % of
// the chunks differ, and a partial load of half the layers, against a full load. Fresh
// processes each time, as elsewhere; the first source is another server of the big model only,
// in a process of its own (it is killed).
void LocalBench::ChunkRows() {
  const std::string older = MakeOlderCopy(big_, ws_.dir() + "/older", o_.chunk_bytes);
  const std::string& endpoint = server_.endpoints[0];
  for (int rep = 0; rep < o_.reps; ++rep) {
    std::fprintf(stderr, "chunk-granular rows, repetition %d/%d\n", rep + 1, o_.reps);
    for (const bool kill : {false, true}) {
      ServeRole first =
          StartServeRole(command_, ws_.dir() + "/second", {big_}, {}, "second server");
      LoadKind kind;
      if (kill) kind.kill_pid = first.child->pid();
      samples_.Add(kill ? "resume_killed" : "resume_clean",
                   Load(big_, {first.endpoints[0], endpoint}, kind));
      first.child->Signal(SIGKILL);
      first.child->Wait(20s);
    }
    samples_.Add("delta_full", Load(big_, {endpoint}, LoadKind()));
    LoadKind delta;
    delta.delta_from = older;
    samples_.Add("delta", Load(big_, {endpoint}, delta));
    LoadKind partial;
    partial.select = EvenLayers(big_);
    samples_.Add("partial", Load(big_, {endpoint}, partial));
  }
}

// The server's CPU time around the load is its share of the work (sending side).
json LocalBench::Load(const std::string& model, const std::vector<std::string>& sources,
                      const LoadKind& kind) {
  const double server_cpu_before = ProcessCpuSeconds(server_pid());
  json out = RunChild(LoadArgv(command_, model, sources, kind), "load");
  out["server_cpu_seconds"] = ProcessCpuSeconds(server_pid()) - server_cpu_before;
  return WithRate(std::move(out));
}

json LocalBench::Concurrent(int k) {
  std::vector<std::unique_ptr<Child>> clients;
  for (int i = 0; i < k; ++i) {
    clients.push_back(
        std::make_unique<Child>(LoadArgv(command_, big_, {server_.endpoints[0]}, LoadKind()),
                                ws_.dir() + "/c" + std::to_string(i)));
  }
  return Aggregate(clients, "concurrent client");
}

// Waits for K loaders started together: aggregate rate over the slowest, and its spread.
json LocalBench::Aggregate(std::vector<std::unique_ptr<Child>>& children, const std::string& what) {
  double slowest = 0, fastest = 1e9, bytes = 0;
  long rss = 0;
  for (auto& c : children) {
    if (c->Wait(300s) != 0) Die(what + " failed: " + c->Stderr());
    json out = json::parse(c->Stdout());
    slowest = std::max(slowest, out["seconds"].get<double>());
    fastest = std::min(fastest, out["seconds"].get<double>());
    bytes += out["bytes"].get<double>();
    rss = std::max(rss, out["max_rss_kib"].get<long>());
  }
  return {{"seconds", slowest},
          {"gbps", bytes / slowest / 1e9},
          {"spread", slowest / fastest},
          {"max_rss_kib", rss}};
}

// One raw sender to K raw receivers; with one, the row also carries both sides' CPU time and
// the receiver's connect time, as a load row does.
json LocalBench::RawStreams(int k) {
  const std::string port_file = ws_.dir() + "/raw-port";
  for (int i = 0; i < k; ++i) std::remove((port_file + "." + std::to_string(i)).c_str());
  Child sender(RawSendArgv(command_, big_, port_file, k), ws_.dir() + "/raw-send");
  std::vector<std::unique_ptr<Child>> receivers;
  for (int i = 0; i < k; ++i) {
    receivers.push_back(std::make_unique<Child>(RawRecvArgv(command_, big_, port_file, i),
                                                ws_.dir() + "/raw-recv" + std::to_string(i)));
  }
  json result = Aggregate(receivers, "raw receiver");
  if (sender.Wait(60s) != 0) Die("raw sender failed: " + sender.Stderr());
  if (k == 1) {
    const json receiver = json::parse(receivers[0]->Stdout());
    result["cpu_seconds"] = receiver["cpu_seconds"];
    result["connect"] = receiver["connect"];
    result["server_cpu_seconds"] = json::parse(sender.Stdout())["cpu_seconds"];
  }
  return result;
}

// A read of the checkpoint by `role` (roles.cpp: netloader's, or cat's or dd's), warm or cold.
json LocalBench::Disk(const std::string& role, bool cold) {
  std::vector<std::string> argv = command_.Argv(role);
  argv.insert(argv.end(), {"--model", big_});
  if (cold) argv.push_back("--cold");
  return WithRate(RunChild(argv, role));
}

// A pull of the big model into files (netloader-client --output): straight into them, or into
// memory and then written (in_memory), or resumed after a first pull stopped at half (resumed:
// the sample is the second pull's). The files are removed afterwards.
json LocalBench::Output(bool in_memory, bool resumed) {
  const std::string dir = ws_.dir() + "/output";
  std::filesystem::remove_all(dir);
  LoadKind kind;
  kind.output = dir;
  kind.in_memory_output = in_memory;
  if (resumed) {
    LoadKind half = kind;
    half.stop_at_half = true;
    RunChild(LoadArgv(command_, big_, {server_.endpoints[0]}, half), "output-half");
  }
  json out = RunChild(LoadArgv(command_, big_, {server_.endpoints[0]}, kind), "output");
  std::filesystem::remove_all(dir);
  return WithRate(std::move(out));
}

json LocalBench::RunChild(const std::vector<std::string>& argv, const std::string& name) const {
  return RunRoleChild(argv, ws_.dir() + "/" + name, name, 300s);
}

void LocalBench::StopServer() {
  server_.child->Signal(SIGTERM);
  server_.child->Wait(20s);
}

// The serve role writes its pid beside its endpoint file (roles.h).
pid_t LocalBench::server_pid() const {
  std::ifstream pid_file(ws_.dir() + "/server.pid");
  pid_t pid = 0;
  pid_file >> pid;
  return pid;
}

}  // namespace

int RunLocalBench(const Options& options) { return LocalBench(options).Run(); }

}  // namespace netloader::bench
