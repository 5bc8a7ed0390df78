#include "tests/bench/roles.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

// The checksums-off and received-in-place rows load through the library's internal entry point:
// the public Load always stages and verifies.
#include "client/client_internal.h"
#include "netloader/client.h"
#include "netloader/safetensors.h"
#include "netloader/secret.h"
#include "netloader/server.h"
#include "tests/bench/fatal.h"
#include "tests/bench/raw_mpi_roles.h"
#include "tests/bench/storage_roles.h"
#include "tests/bench/usage.h"
#include "tests/support/test_util.h"
#include "transfer/mpi/transport.h"

namespace netloader::bench {

using json = nlohmann::json;

TransportOptions Transport(const RoleArgs& args) {
  TransportOptions options;
  options.rendezvous_uri = args.rendezvous;
  options.interface = args.interface;
  options.mpi_helpers = args.mpi_helpers;
  return options;
}

void PublishFile(const std::string& path, const std::string& text) {
  std::ofstream(path + ".tmp") << text;
  std::rename((path + ".tmp").c_str(), path.c_str());
}

Termination::Termination() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
}

void Termination::Wait() {
  int signal_number = 0;
  sigwait(&set_, &signal_number);
}

namespace {

// Serves every --model on its own endpoint (one per line of --endpoint-file) until SIGTERM. Its
// pid goes into server.pid beside the endpoint file: the orchestrator reads the server's CPU
// time and memory from /proc by it.
int RoleServe(const RoleArgs& args) {
  std::ofstream(std::filesystem::path(args.endpoint_file).parent_path() / "server.pid") << getpid();
  Termination termination;
  std::vector<HostModel> models;
  std::vector<std::unique_ptr<Server>> servers;
  std::string endpoints;
  for (const std::string& path : args.models) {
    auto layout = Check(ReadCheckpointLayout(path), path);
    models.push_back(Check(HostModel::Load(layout), path));
    ServerOptions options;
    options.transport = Transport(args);
    options.max_concurrent_transfers = 8;
    if (!args.listen.empty()) options.listen = args.listen;
    options.chunk_bytes = args.chunk_bytes;
    options.window = args.window;
    options.secret = Check(LoadOrCreateSecret(DefaultSecretPath()), "secret");
    servers.push_back(Check(Server::Start(options, models.back().view()), "serve"));
    endpoints += servers.back()->endpoint() + "\n";
  }
  PublishFile(args.endpoint_file, endpoints);
  termination.Wait();
  for (auto& server : servers) server->Stop();
  return 0;
}

// The load's client options but for the data plane. With --kill-pid, a first source that dies
// at half: noticed by the heartbeat deadline, the shortest a client may use (MPI does not report
// a dead peer). The flag is shared, not captured by value: the callback may be copied.
ClientOptions LoadOptions(const RoleArgs& args) {
  ClientOptions options;
  options.sources = args.sources;
  options.stripe = args.stripe;
  options.tensors = args.select;
  if (args.kill_pid > 0) {
    options.heartbeat_timeout = std::chrono::milliseconds(2000);
    auto killed = std::make_shared<bool>(false);
    options.progress = [killed, pid = args.kill_pid](uint64_t done, uint64_t total) {
      if (*killed || 2 * done < total) return;
      kill(pid, SIGKILL);
      *killed = true;
    };
  }
  options.transport = Transport(args);
  options.window = args.window;
  options.secret = Check(LoadOrCreateSecret(DefaultSecretPath()), "secret");
  return options;
}

// What a load prints: the library's figures, with the bench's start-up figures folded in
// (MPI started by --preinit counts as the load's transport start).
json LoadResult(const LoadStats& stats, double allocate_seconds, double preinit_seconds,
                double cpu_seconds) {
  uint64_t pulled = 0;
  for (const SourceAttempt& a : stats.attempts) pulled += a.bytes;
  return {{"seconds", stats.seconds},
          {"bytes", stats.bytes},
          {"bytes_received", stats.bytes_received},
          {"pulled", pulled},
          {"sources_tried", stats.attempts.size()},
          {"tensors", stats.tensors},
          {"register", stats.register_seconds},
          {"transport", stats.transport_seconds + preinit_seconds},
          {"allocate", allocate_seconds},
          {"connect", stats.connect_seconds},
          {"transfer", stats.transfer_seconds},
          {"cpu_seconds", cpu_seconds},
          {"max_rss_kib", MaxRssKiB()}};
}

// The output rows: a load into --output's files (MappedCheckpoint), committed; or, with
// --in-memory-output, into memory and then written. Timed from the start to the files in place.
// --stop-at-half leaves the partial files of a pull interrupted at half instead: the first half
// of the bytes, in storage order, copied from the checkpoint itself (an interrupted transfer
// would leave the same, but a client leaving mid-stream can abort an in-process MPI server
// through UCX: README, "Known gaps").
int RoleLoadToFiles(const RoleArgs& args) {
  auto layout = Check(ReadCheckpointLayout(args.models.at(0)), "layout");
  if (args.stop_at_half) {
    MappedCheckpoint files = Check(MappedCheckpoint::Create(args.output, layout), "output");
    // The leading tensors that make up at most half the bytes, shard by shard.
    CheckpointLayout half;
    uint64_t kept = 0;
    bool full = false;
    for (const ShardLayout& shard : layout.shards) {
      if (full) break;
      ShardLayout part = shard;
      part.tensors.clear();
      for (const TensorSpec& t : shard.tensors) {
        if (2 * (kept + t.size_bytes) > layout.total_bytes()) {
          full = true;
          break;
        }
        kept += t.size_bytes;
        part.tensors.push_back(t);
      }
      half.shards.push_back(std::move(part));
    }
    ModelView view;
    view.tensors.assign(files.view().tensors.begin(),
                        files.view().tensors.begin() + static_cast<long>(half.tensor_count()));
    Check(ReadTensors(half, view), "the first half");
    std::cout << json{{"stopped", true}, {"bytes_kept", kept}}.dump() << std::endl;
    return 0;
  }
  Check(InitializeTransport(Transport(args)), "InitializeTransport");
  ClientOptions options = LoadOptions(args);
  const auto start = Clock::now();
  Result<LoadStats> stats = Status(StatusCode::kInternal, "not run");
  bool resumed = false;
  if (args.in_memory_output) {
    HostModel model = Check(HostModel::Allocate(layout), "allocate");
    stats = Load(options, model.view());
    if (stats.ok()) {
      Check(WriteCheckpoint(args.output, layout, model.view()), "write");
      // On disk, as a committed MappedCheckpoint is (it writes its files back before renaming).
      for (const std::string& name : CheckpointFileNames(layout)) {
        const int fd = open((args.output + "/" + name).c_str(), O_RDONLY);
        if (fd < 0 || fsync(fd) != 0) Die("cannot write back " + name);
        close(fd);
      }
    }
  } else {
    MappedCheckpoint files = Check(MappedCheckpoint::Create(args.output, layout), "output");
    resumed = files.resumed();
    options.destination_filled = resumed;
    stats = Load(options, files.view());
    if (stats.ok()) Check(files.Commit(), "commit");
  }
  const double seconds = Since(start);
  const LoadStats& s = Check(std::move(stats), "load");
  std::cout << json{{"seconds", seconds},
                    {"bytes", s.bytes},
                    {"bytes_received", s.bytes_received},
                    {"bytes_reused", s.bytes_reused},
                    {"resumed", resumed},
                    {"max_rss_kib", MaxRssKiB()}}
                   .dump()
            << std::endl;
  return 0;
}

// One netloader load into fresh buffers, timed by the library from the first Register.
int RoleLoad(const RoleArgs& args) {
  if (!args.output.empty()) return RoleLoadToFiles(args);
  testing::CrashPhase("while loading");
  auto layout = Check(ReadCheckpointLayout(args.models.at(0)), "layout");
  std::future<Status> started;
  if (args.overlap) started = std::async(std::launch::async, InitializeTransport, Transport(args));
  const auto allocate_start = Clock::now();
  HostModel model = Check(HostModel::Allocate(layout), "allocate");
  const double allocate_seconds = Since(allocate_start);
  double preinit_seconds = 0;
  if (args.preinit) {
    const auto start = Clock::now();
    Check(InitializeTransport(Transport(args)), "InitializeTransport");
    preinit_seconds = Since(start);
  }
  ClientOptions options = LoadOptions(args);
  if (!args.delta_from.empty()) {
    // The older copy in memory, as an instance refreshing its weights holds it.
    model = Check(HostModel::Load(Check(ReadCheckpointLayout(args.delta_from), "older copy")),
                  "older copy");
    options.destination_filled = true;
  }
  ReceiveOptions receiving;
  receiving.staged = !args.direct;
  receiving.verify = args.verify;
  const double cpu_before = CpuSeconds();
  auto stats = Check(internal::Load(options, model.view(),
                                    *transfer::MakeMpiDataPlane(options.transport), receiving),
                     "load");
  std::cout
      << LoadResult(stats, allocate_seconds, preinit_seconds, CpuSeconds() - cpu_before).dump()
      << std::endl;
  testing::CrashPhase("after printing its result");
  return 0;
}

// Reads the checkpoint from disk into fresh buffers (what a loader without netloader does); with
// --cold, from the disk itself rather than the page cache. Roles disk-cat and disk-dd read the
// same files with `cat` and with `dd bs=4M` instead, into nothing: the rates a user compares with.
int RoleDisk(const RoleArgs& args) {
  auto layout = Check(ReadCheckpointLayout(args.models.at(0)), "layout");
  if (args.cold) {
    for (const auto& shard : layout.shards) {
      int fd = open(shard.path.c_str(), O_RDONLY);
      fdatasync(fd);
      posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      close(fd);
    }
  }
  const auto start = Clock::now();
  if (args.role == "disk") {
    auto model = Check(HostModel::Load(layout), "disk load");
  } else {
    for (const auto& shard : layout.shards) {
      const std::string command =
          (args.role == "disk-cat" ? "cat \"$0\" > /dev/null"
                                   : "dd if=\"$0\" of=/dev/null bs=4M status=none");
      testing::Child tool({"/bin/sh", "-c", command, shard.path},
                          std::filesystem::temp_directory_path().string() + "/netloader-bench-" +
                              args.role + "-" + std::to_string(getpid()));
      if (tool.Wait(std::chrono::seconds(300)) != 0) Die(command + " failed: " + tool.Stderr());
    }
  }
  const double seconds = Since(start);
  std::cout << json{{"seconds", seconds}, {"bytes", layout.total_bytes()}}.dump() << std::endl;
  return 0;
}

}  // namespace

int PlayRole(const RoleArgs& args) {
  // A crash names the role; the string must outlive the process's last signal.
  static const std::string who = "netloader-bench --role " + args.role;
  testing::InstallCrashReporter(who.c_str());
  if (args.role == "serve") return RoleServe(args);
  if (args.role == "load") return RoleLoad(args);
  if (args.role == "raw-send") return RoleRawSend(args);
  if (args.role == "raw-recv") return RoleRawRecv(args);
  if (args.role == "disk" || args.role == "disk-cat" || args.role == "disk-dd") {
    return RoleDisk(args);
  }
  if (args.role == "storage-serve") return RoleStorageServe(args);
  if (args.role == "storage-read") return RoleStorageRead(args);
  if (args.role == "cold-start") return RoleColdStart(args);
  Die("unknown role " + args.role);
}

}  // namespace netloader::bench
