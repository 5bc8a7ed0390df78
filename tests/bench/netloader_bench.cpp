// netloader-bench: measures netloader against raw MPI, disk and itself in one invocation, every
// figure a median over interleaved repetitions, every claim a ratio against a baseline measured in
// the same run (the machines are noisy). Each measurement runs in fresh processes, as a real load
// does. See BENCHMARKS.md.
//
// The same binary plays every part: without --role it orchestrates; with --role it is one of the
// processes being measured and prints one JSON line on stdout.

#include <arpa/inet.h>
#include <fcntl.h>
#include <mpi.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "client/client_internal.h"
#include "examples/checkpoint_gen.h"
#include "netloader/client.h"
#include "netloader/logging.h"
#include "netloader/safetensors.h"
#include "netloader/secret.h"
#include "netloader/server.h"
#include "netloader/src/base/host_memory.h"
#include "netloader/src/base/xxh3.h"
#include "tests/support/test_util.h"
#include "transfer/mpi/transport.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using netloader::testing::Child;
using namespace std::chrono_literals;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

long MaxRssKiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

// CPU seconds (user + system, every thread) this process has used.
double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// The same for another process, from /proc/PID/stat (utime and stime, fields 14 and 15).
double ProcessCpuSeconds(pid_t pid) {
  std::string stat = netloader::testing::ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');  // the command name may hold spaces
  if (paren == std::string::npos) return 0;
  std::istringstream fields(stat.substr(paren + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; fields >> field && i <= 15; ++i) {
    if (i >= 14) ticks += std::stod(field);
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// What must be undone even when the run dies (the simulated hosts).
std::function<void()> g_cleanup;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "netloader-bench: %s\n", what.c_str());
  if (g_cleanup) g_cleanup();
  std::exit(1);
}

template <typename T>
T Check(netloader::Result<T> result, const std::string& what) {
  if (!result.ok()) Die(what + ": " + result.status().ToString());
  return std::move(result).value();
}

void Check(const netloader::Status& status, const std::string& what) {
  if (!status.ok()) Die(what + ": " + status.ToString());
}

// ---------------------------------------------------------------------------------------------
// Roles: the processes being measured.

struct RoleArgs {
  std::string role;
  std::string rendezvous;
  std::vector<std::string> models;
  std::vector<std::string> sources;
  std::string port_file;
  std::string endpoint_file;
  uint64_t chunk_bytes = netloader::ServerOptions{}.chunk_bytes;
  int window = 4;
  int peers = 1;
  bool verify = true;
  bool preinit = false;
  bool overlap = false;  // start MPI on a thread while allocating, as an engine should
  bool cold = false;
  bool direct = false;
  std::string interface = "lo";
  std::string listen;  // the serve role's endpoint (default: 127.0.0.1, a free port)
  int stripe = 1;
  pid_t kill_pid = 0;               // SIGKILLed once half the model is verified (the resume row)
  std::string delta_from;           // an older copy to start from (the delta row)
  std::vector<std::string> select;  // tensor patterns of a partial load (the partial row)
  std::string start_file;           // storage-read: begin once this file exists
};

netloader::TransportOptions Transport(const RoleArgs& args) {
  netloader::TransportOptions options;
  options.rendezvous_uri = args.rendezvous;
  options.interface = args.interface;
  return options;
}

// Serves every --model on its own endpoint (one per line of --endpoint-file) until SIGTERM.
int RoleServe(const RoleArgs& args) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  std::vector<netloader::HostModel> models;
  std::vector<std::unique_ptr<netloader::Server>> servers;
  std::string endpoints;
  for (const std::string& path : args.models) {
    auto layout = Check(netloader::ReadCheckpointLayout(path), path);
    models.push_back(Check(netloader::HostModel::Load(layout), path));
    netloader::ServerOptions options;
    options.transport = Transport(args);
    options.max_concurrent_transfers = 8;
    if (!args.listen.empty()) options.listen = args.listen;
    options.chunk_bytes = args.chunk_bytes;
    options.window = args.window;
    options.secret = Check(netloader::LoadOrCreateSecret(netloader::DefaultSecretPath()), "secret");
    servers.push_back(Check(netloader::Server::Start(options, models.back().view()), "serve"));
    endpoints += servers.back()->endpoint() + "\n";
  }
  std::ofstream(args.endpoint_file + ".tmp") << endpoints;
  std::rename((args.endpoint_file + ".tmp").c_str(), args.endpoint_file.c_str());
  int signal_number = 0;
  sigwait(&stop, &signal_number);
  for (auto& server : servers) server->Stop();
  return 0;
}

// One netloader load into fresh buffers, timed by the library from the first Register.
int RoleLoad(const RoleArgs& args) {
  netloader::testing::CrashPhase("while loading");
  auto layout = Check(netloader::ReadCheckpointLayout(args.models.at(0)), "layout");
  std::future<netloader::Status> started;
  if (args.overlap) {
    started = std::async(std::launch::async, netloader::InitializeTransport, Transport(args));
  }
  const auto allocate_start = Clock::now();
  netloader::HostModel model = Check(netloader::HostModel::Allocate(layout), "allocate");
  const double allocate_seconds = Since(allocate_start);
  double preinit_seconds = 0;
  if (args.preinit) {
    const auto start = Clock::now();
    Check(netloader::InitializeTransport(Transport(args)), "InitializeTransport");
    preinit_seconds = Since(start);
  }
  netloader::ClientOptions options;
  options.sources = args.sources;
  options.stripe = args.stripe;
  options.tensors = args.select;
  if (!args.delta_from.empty()) {
    // The older copy in memory, as an instance refreshing its weights holds it.
    model = Check(netloader::HostModel::Load(
                      Check(netloader::ReadCheckpointLayout(args.delta_from), "older copy")),
                  "older copy");
    options.destination_filled = true;
  }
  bool killed = false;
  if (args.kill_pid > 0) {
    // A first source that dies at half: noticed by the heartbeat deadline, the shortest a
    // client may use (MPI does not report a dead peer).
    options.heartbeat_timeout = std::chrono::milliseconds(2000);
    options.progress = [&](uint64_t done, uint64_t total) {
      if (killed || 2 * done < total) return;
      kill(args.kill_pid, SIGKILL);
      killed = true;
    };
  }
  options.transport = Transport(args);
  options.window = args.window;
  options.secret = Check(netloader::LoadOrCreateSecret(netloader::DefaultSecretPath()), "secret");
  netloader::ReceiveOptions receiving;
  receiving.staged = !args.direct;
  receiving.verify = args.verify;
  const double cpu_before = CpuSeconds();
  auto stats = Check(netloader::internal::Load(
                         options, model.view(),
                         *netloader::transfer::MakeMpiDataPlane(options.transport), receiving),
                     "load");
  uint64_t pulled = 0;
  for (const netloader::SourceAttempt& a : stats.attempts) pulled += a.bytes;
  std::cout << json{{"seconds", stats.seconds},
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
                    {"cpu_seconds", CpuSeconds() - cpu_before},
                    {"max_rss_kib", MaxRssKiB()}}
                   .dump()
            << std::endl;
  netloader::testing::CrashPhase("after printing its result");
  return 0;
}

// Bare MPI: the sender holds the checkpoint's bytes read from disk (warm, as a netloader server's
// are); each receiver gets fresh buffers exactly as a netloader client does. Same rendezvous, pml,
// chunk size and window as netloader; nothing else: no handshake, no checksums.
uint64_t FileDataBytes(const std::string& path,
                       std::vector<std::pair<uint64_t, uint64_t>>* ranges) {
  auto layout = Check(netloader::ReadCheckpointLayout(path), path);
  uint64_t total = 0;
  for (const auto& shard : layout.shards) {
    for (const auto& t : shard.tensors) {
      if (ranges) ranges->push_back({t.file_offset, t.size_bytes});
      total += t.size_bytes;
    }
  }
  return total;
}

void Stream(MPI_Comm* comms, int peers, char* data, uint64_t bytes, uint64_t chunk, int window,
            bool sending) {
  std::deque<MPI_Request> in_flight;
  for (uint64_t offset = 0; offset < bytes; offset += chunk) {
    const int count = static_cast<int>(std::min(chunk, bytes - offset));
    for (int p = 0; p < peers; ++p) {
      MPI_Request request;
      if (sending) {
        MPI_Isend(data + offset, count, MPI_BYTE, 0, 1, comms[p], &request);
      } else {
        MPI_Irecv(data + offset, count, MPI_BYTE, 0, 1, comms[p], &request);
      }
      in_flight.push_back(request);
    }
    while (in_flight.size() >= static_cast<size_t>(window * peers)) {
      MPI_Wait(&in_flight.front(), MPI_STATUS_IGNORE);
      in_flight.pop_front();
    }
  }
  for (MPI_Request& r : in_flight) MPI_Wait(&r, MPI_STATUS_IGNORE);
}

int RoleRawSend(const RoleArgs& args) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  const uint64_t bytes = FileDataBytes(args.models.at(0), &ranges);
  auto layout = Check(netloader::ReadCheckpointLayout(args.models.at(0)), "layout");
  auto model = Check(netloader::HostModel::Load(layout), "load");
  // One contiguous copy of the data, written by the kernel (pread), like a server's memory.
  char* data = static_cast<char*>(netloader::MapHostMemory(std::max<uint64_t>(bytes, 1)));
  int fd = open(layout.shards[0].path.c_str(), O_RDONLY);
  uint64_t at = 0;
  for (auto& [offset, size] : ranges) {
    if (pread(fd, data + at, size, static_cast<off_t>(offset)) != static_cast<ssize_t>(size)) {
      Die("pread");
    }
    at += size;
  }
  close(fd);
  Check(netloader::transfer::MakeMpiTransport(Transport(args)), "MPI");
  // One port per receiver (PORT_FILE.i), as a netloader server opens one per session: receivers
  // that connect to one port at the same moment can wedge in Open MPI's PMIx lookup (DESIGN.md).
  std::vector<std::array<char, MPI_MAX_PORT_NAME>> ports(args.peers);
  for (int p = 0; p < args.peers; ++p) {
    MPI_Open_port(MPI_INFO_NULL, ports[p].data());
    const std::string file = args.port_file + "." + std::to_string(p);
    std::ofstream(file + ".tmp") << ports[p].data() << "\n";
    std::rename((file + ".tmp").c_str(), file.c_str());
  }
  std::vector<MPI_Comm> comms(args.peers);
  for (int p = 0; p < args.peers; ++p) {
    MPI_Comm_accept(ports[p].data(), MPI_INFO_NULL, 0, MPI_COMM_SELF, &comms[p]);
  }
  const double cpu_before = CpuSeconds();
  Stream(comms.data(), args.peers, data, bytes, args.chunk_bytes, args.window, true);
  const double cpu_seconds = CpuSeconds() - cpu_before;
  for (MPI_Comm& c : comms) MPI_Comm_disconnect(&c);
  for (auto& port : ports) MPI_Close_port(port.data());
  std::cout << json{{"cpu_seconds", cpu_seconds}, {"max_rss_kib", MaxRssKiB()}}.dump() << std::endl;
  return 0;
}

int RoleRawRecv(const RoleArgs& args) {
  const uint64_t bytes = FileDataBytes(args.models.at(0), nullptr);
  auto layout = Check(netloader::ReadCheckpointLayout(args.models.at(0)), "layout");
  auto model = Check(netloader::HostModel::Allocate(layout), "allocate");  // same kind of memory
  char* data = static_cast<char*>(netloader::MapHostMemory(std::max<uint64_t>(bytes, 1)));
  const std::string port = netloader::testing::WaitForLine(args.port_file, 60s);
  if (port.empty()) Die("no port from raw-send");
  Check(netloader::transfer::MakeMpiTransport(Transport(args)), "MPI");
  netloader::PopulateForWrite(data, std::max<uint64_t>(bytes, 1));  // as netloader's client does
  MPI_Comm comm;
  const auto connect_start = Clock::now();
  MPI_Comm_connect(port.c_str(), MPI_INFO_NULL, 0, MPI_COMM_SELF, &comm);
  const double connect_seconds = Since(connect_start);  // not part of the row: MPI's own cost
  const auto start = Clock::now();
  const double cpu_before = CpuSeconds();
  Stream(&comm, 1, data, bytes, args.chunk_bytes, args.window, false);
  const double seconds = Since(start);
  const double cpu_seconds = CpuSeconds() - cpu_before;
  MPI_Comm_disconnect(&comm);
  std::cout << json{{"seconds", seconds},
                    {"bytes", bytes},
                    {"connect", connect_seconds},
                    {"cpu_seconds", cpu_seconds},
                    {"max_rss_kib", MaxRssKiB()}}
                   .dump()
            << std::endl;
  return 0;
}

// Reads the checkpoint from disk into fresh buffers (what a loader without netloader does).
int RoleDisk(const RoleArgs& args) {
  auto layout = Check(netloader::ReadCheckpointLayout(args.models.at(0)), "layout");
  if (args.cold) {
    for (const auto& shard : layout.shards) {
      int fd = open(shard.path.c_str(), O_RDONLY);
      fdatasync(fd);
      posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      close(fd);
    }
  }
  const auto start = Clock::now();
  auto model = Check(netloader::HostModel::Load(layout), "disk load");
  const double seconds = Since(start);
  std::cout << json{{"seconds", seconds}, {"bytes", layout.total_bytes()}}.dump() << std::endl;
  return 0;
}

// ---------------------------------------------------------------------------------------------
// The fan-out row's "shared storage" (what K instances reading one NFS server see): a host
// that streams the checkpoint's files over plain TCP to each reader that connects, from the page
// cache (sendfile), until SIGTERM.
int RoleStorageServe(const RoleArgs& args) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  std::vector<std::string> files;
  for (const auto& shard :
       Check(netloader::ReadCheckpointLayout(args.models.at(0)), "layout").shards)
    files.push_back(shard.path);
  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = 0;
  inet_pton(AF_INET, args.listen.c_str(), &address.sin_addr);
  socklen_t length = sizeof address;
  if (bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      listen(listener, 64) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    Die("storage: cannot listen on " + args.listen);
  }
  std::ofstream(args.endpoint_file + ".tmp")
      << args.listen << ":" << ntohs(address.sin_port) << "\n";
  std::rename((args.endpoint_file + ".tmp").c_str(), args.endpoint_file.c_str());
  std::thread acceptor([&] {
    while (true) {
      const int connection = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (connection < 0) return;
      std::thread([connection, files] {
        for (const std::string& file : files) {
          const int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
          off_t offset = 0;
          struct stat info {};
          fstat(fd, &info);
          while (offset < info.st_size &&
                 sendfile(connection, fd, &offset, info.st_size - offset) > 0) {
          }
          close(fd);
        }
        close(connection);
      }).detach();
    }
  });
  acceptor.detach();
  int signal_number = 0;
  sigwait(&stop, &signal_number);
  return 0;
}

// A reader of that storage: every byte of the checkpoint into fresh memory, as a disk loader
// reads its files (no checksums).
int RoleStorageRead(const RoleArgs& args) {
  const auto start = Clock::now();
  const std::string& source = args.sources.at(0);
  const size_t colon = source.rfind(':');
  uint64_t expected = 0;
  for (const auto& shard :
       Check(netloader::ReadCheckpointLayout(args.models.at(0)), "layout").shards) {
    struct stat info {};
    stat(shard.path.c_str(), &info);
    expected += static_cast<uint64_t>(info.st_size);
  }
  std::vector<char> memory(expected);
  std::fill(memory.begin(), memory.end(), 0);  // fresh memory, faulted in before the start
  std::cerr << "ready" << std::endl;
  while (access(args.start_file.c_str(), F_OK) != 0 && Since(start) < 600) {
    std::this_thread::sleep_for(1ms);
  }
  const auto begin = Clock::now();
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(std::stoi(source.substr(colon + 1))));
  inet_pton(AF_INET, source.substr(0, colon).c_str(), &address.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    Die("storage: cannot connect to " + source);
  }
  uint64_t got = 0;
  while (got < expected) {
    const ssize_t n = read(fd, memory.data() + got, expected - got);
    if (n <= 0) Die("storage: the stream ended after " + std::to_string(got) + " bytes");
    got += static_cast<uint64_t>(n);
  }
  close(fd);
  std::cout << json{{"ok", true}, {"bytes", got}, {"seconds", Since(begin)}}.dump() << std::endl;
  return 0;
}

// The orchestrator.

std::string Human(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.0f MiB", bytes / (1 << 20));
  return text;
}

// `--chunk-mib`'s value for a child process, exact for any byte count (std::to_string's six
// decimals are not).
std::string ChunkMibArgument(uint64_t chunk_bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", static_cast<double>(chunk_bytes) / (1 << 20));
  return text;
}

struct Options {
  bool quick = false;
  bool focus = false;  // only raw MPI and netloader (MPI pre-started, checksums on and off)
  double size_mib = 1024;
  int tensors = 2000;
  int reps = 5;
  uint64_t chunk_bytes = netloader::ServerOptions{}.chunk_bytes;
  int window = netloader::ClientOptions{}.window;
  std::string json_path;
  std::string workdir;
  std::string checkpoint;  // measure this checkpoint instead of a generated one
  bool hosts = false;      // measure across simulated hosts instead (HostsBench)
  int host_mbit = 500;     // each source host's NIC
  bool fanout = false;     // relay fan-out across simulated hosts instead (FanoutBench)
  int fanout_mbit = 400;   // every host's NIC in the fan-out row
  int max_k = 8;           // instances started at once: 1, 2, 4, ... up to this
  std::vector<std::string> modes = {"relay", "direct", "storage"};
  int tree_fanout = netloader::ServerOptions{}.fanout;  // relay mode: every server's --fanout
  bool size_given = false;
};

// Every sample of one run, by row, and the statistics the tables are made of.
class SampleTable {
 protected:
  void Add(const std::string& name, json sample) { samples_[name].push_back(std::move(sample)); }

  struct Stat {
    double median = 0, min = 0, max = 0;
  };
  Stat Of(const std::string& name, const std::string& field) const {
    std::vector<double> v;
    for (const json& s : samples_.at(name)) v.push_back(s[field].get<double>());
    std::sort(v.begin(), v.end());
    return {v[v.size() / 2], v.front(), v.back()};
  }

  // Median over repetitions of sample[i] / baseline[i] (of `field`: the rate by default): each
  // ratio compares two measurements taken moments apart, which survives the drift of a noisy
  // machine better than a ratio of medians.
  double PairedRatio(const std::string& name, const std::string& baseline,
                     const std::string& field = "gbps") const {
    return Quantile(PairedRatios(name, baseline, field), 0.5);
  }

  // Those ratios, sorted: their spread shows how noisy the machine was.
  std::vector<double> PairedRatios(const std::string& name, const std::string& baseline,
                                   const std::string& field = "gbps") const {
    return PairedSorted(name, baseline, [&](const json& a, const json& b) {
      return a[field].get<double>() / b[field].get<double>();
    });
  }

  // The same for two durations: baseline[i][baseline_field] / sample[i][field], how fast `name`
  // ran against `baseline` (above 1: faster).
  double PairedTimeRatio(const std::string& baseline, const std::string& baseline_field,
                         const std::string& name, const std::string& field) const {
    const auto faster = [&](const json& a, const json& b) {
      return b[baseline_field].get<double>() / a[field].get<double>();
    };
    return Quantile(PairedSorted(name, baseline, faster), 0.5);
  }

  template <typename F>
  std::vector<double> PairedSorted(const std::string& name, const std::string& baseline,
                                   F ratio) const {
    const auto& a = samples_.at(name);
    const auto& b = samples_.at(baseline);
    std::vector<double> ratios;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) ratios.push_back(ratio(a[i], b[i]));
    std::sort(ratios.begin(), ratios.end());
    return ratios;
  }

  // The q-quantile of sorted values (0.5: the median, as Of() takes it), 0 when there are none.
  static double Quantile(const std::vector<double>& sorted, double q) {
    return sorted.empty() ? 0 : sorted[static_cast<size_t>(q * sorted.size())];
  }

  std::map<std::string, std::vector<json>> samples_;
};

// Runs a role process to its end (at most `timeout`) and returns its JSON line; the whole run
// dies, saying which role failed and why, when it exits otherwise.
json RunRole(const std::vector<std::string>& argv, const std::string& log_prefix,
             const std::string& name, std::chrono::seconds timeout) {
  Child child(argv, log_prefix);
  const int code = child.Wait(timeout);
  json out = json::parse(child.Stdout(), nullptr, false);
  if (code != 0 || out.is_discarded()) {
    Die(name + " failed (exit " + std::to_string(code) +
        "): " + netloader::testing::ResolveCrashTrace(child.Stderr(), argv.at(0)));
  }
  return out;
}

class Bench : SampleTable {
 public:
  explicit Bench(Options options) : o_(std::move(options)) {}

  int Run() {
    self_ = std::filesystem::read_symlink("/proc/self/exe").string();
    tmp_ = std::make_unique<netloader::testing::TempDir>();
    dir_ = o_.workdir.empty() ? tmp_->path() : o_.workdir;
    // Every role of this run shares a secret, as a real deployment does (CURVE on the control
    // plane is part of what is measured).
    setenv("NETLOADER_SECRET_FILE", (tmp_->path() + "/secret").c_str(), 1);
    Prepare();
    StartRendezvousAndServer();
    std::vector<std::pair<uint64_t, uint64_t>> tensors;
    const uint64_t bytes = FileDataBytes(big_, &tensors);
    tensor_count_ = tensors.size();
    std::fprintf(stderr, "model: %s (%s), %zu tensors; %d repetitions\n", big_.c_str(),
                 Human(bytes).c_str(), tensor_count_, o_.reps);
    // Each repetition runs every row once, in an order rotated by one per repetition, so that
    // what one run leaves behind (the raw pair frees 2 GiB as it exits) does not always fall on
    // the same next row.
    // A load row's kind: the defaults (checksums on, MPI started beforehand) changed by `set`.
    auto kind = [](const std::function<void(LoadKind&)>& set) {
      LoadKind k;
      set(k);
      return k;
    };
    const LoadKind no_checksum = kind([](LoadKind& k) { k.verify = false; });
    const LoadKind direct = kind([](LoadKind& k) { k.direct = true; });
    const LoadKind end_to_end = kind([](LoadKind& k) { k.preinit = false; });
    const LoadKind overlap = kind([](LoadKind& k) {
      k.preinit = false;
      k.overlap = true;
    });
    const LoadKind adopt = kind([](LoadKind& k) {
      k.preinit = false;
      k.adopt = true;
    });
    std::vector<std::pair<std::string, std::function<json()>>> rows = {
        {"raw_mpi", [&] { return RawStreams(1); }},
        {"netloader_preinit", [&] { return Load(big_, endpoints_[0], LoadKind()); }},
        {"netloader_no_checksum", [&] { return Load(big_, endpoints_[0], no_checksum); }},
        {"netloader_direct", [&] { return Load(big_, endpoints_[0], direct); }}};
    if (!o_.focus) {
      rows.push_back({"netloader", [&] { return Load(big_, endpoints_[0], end_to_end); }});
      rows.push_back({"netloader_overlap", [&] { return Load(big_, endpoints_[0], overlap); }});
      rows.push_back({"netloader_adopt", [&] { return Load(big_, endpoints_[0], adopt); }});
      rows.push_back({"disk_warm", [&] { return Disk(false); }});
      rows.push_back({"disk_cold", [&] { return Disk(true); }});
    }
    for (int rep = 0; rep < o_.reps; ++rep) {
      std::fprintf(stderr, "repetition %d/%d\n", rep + 1, o_.reps);
      for (size_t r = 0; r < rows.size(); ++r) {
        const auto& [name, run] = rows[(r + static_cast<size_t>(rep)) % rows.size()];
        Add(name, run());
      }
    }
    if (o_.focus) {
      StopServer();
      return Report(bytes, 0, 0);
    }
    const long server_rss_before = ServerRssKiB();
    for (int k : Ks()) {
      for (int rep = 0; rep < std::max(1, o_.reps / 2); ++rep) {
        std::fprintf(stderr, "%d concurrent clients, repetition %d\n", k, rep + 1);
        // Alternating which goes first, for the same reason as the rotation above.
        if (rep % 2 == 0) Add("raw_mpi_x" + std::to_string(k), RawStreams(k));
        Add("netloader_x" + std::to_string(k), Concurrent(k));
        if (rep % 2 == 1) Add("raw_mpi_x" + std::to_string(k), RawStreams(k));
      }
    }
    const long server_hwm = ServerHwmKiB();
    for (int rep = 0; rep < o_.reps; ++rep) {
      for (size_t t = 0; t < tiny_.size(); ++t) {
        Add("overhead_" + std::to_string(tiny_counts_[t]),
            Load(tiny_[t], endpoints_[t + 1], LoadKind()));
      }
    }
    ChunkRows();
    StopServer();
    return Report(bytes, server_rss_before, server_hwm);
  }

  // Chunk-granular loads: resume after the first source is killed at half the load, against a
  // clean load from the same two sources; a delta refresh of an older copy in which about 2 % of
  // the chunks differ, and a partial load of half the layers, against a full load. Fresh
  // processes each time, as elsewhere.
  void ChunkRows() {
    const std::string older = MakeOlderCopy();
    for (int rep = 0; rep < o_.reps; ++rep) {
      std::fprintf(stderr, "chunk-granular rows, repetition %d/%d\n", rep + 1, o_.reps);
      for (const bool kill : {false, true}) {
        std::unique_ptr<Child> first = StartSecondServer();
        LoadKind kind;
        kind.more_sources = {endpoints_[0]};
        if (kill) kind.kill_pid = first->pid();
        Add(kill ? "resume_killed" : "resume_clean", Load(big_, second_endpoint_, kind));
        first->Signal(SIGKILL);
        first->Wait(20s);
      }
      Add("delta_full", Load(big_, endpoints_[0], LoadKind()));
      LoadKind delta;
      delta.delta_from = older;
      Add("delta", Load(big_, endpoints_[0], delta));
      LoadKind partial;
      partial.select = EvenLayers(big_);
      Add("partial", Load(big_, endpoints_[0], partial));
    }
  }

  // A pipeline stage's share of `model`: one pattern per even-numbered layer
  // ("model.layers.N.*"), or every tensor when it has no such names.
  static std::vector<std::string> EvenLayers(const std::string& model) {
    std::set<std::string> patterns;
    const std::string prefix = "model.layers.";
    for (const auto& shard : Check(netloader::ReadCheckpointLayout(model), model).shards) {
      for (const auto& t : shard.tensors) {
        if (t.name.rfind(prefix, 0) != 0) continue;
        const size_t dot = t.name.find('.', prefix.size());
        const std::string layer = t.name.substr(prefix.size(), dot - prefix.size());
        if (!layer.empty() && (layer.back() - '0') % 2 == 0) {
          patterns.insert(prefix + layer + ".*");
        }
      }
    }
    if (patterns.empty()) return {"*"};
    return {patterns.begin(), patterns.end()};
  }

  // Another server of the big model only, in a process of its own (it is killed).
  std::unique_ptr<Child> StartSecondServer() {
    const std::string dir = dir_ + "/second";
    std::filesystem::create_directories(dir);
    std::filesystem::remove(dir + "/endpoints");
    std::vector<std::string> argv = Role("serve");
    argv.insert(argv.end(), {"--endpoint-file", dir + "/endpoints", "--model", big_});
    auto child = std::make_unique<Child>(argv, dir + "/server");
    second_endpoint_ = netloader::testing::WaitForLine(dir + "/endpoints", 120s);
    if (second_endpoint_.empty()) Die("second server did not start: " + child->Stderr());
    return child;
  }

  // big_'s shard files copied to dir_/older, one byte changed in every 50th chunk's worth of the
  // stream (about 2 % of the chunks differ).
  std::string MakeOlderCopy() const {
    const std::string older = dir_ + "/older";
    std::filesystem::remove_all(older);
    std::filesystem::create_directories(older);
    auto layout = Check(netloader::ReadCheckpointLayout(big_), big_);
    for (const auto& shard : layout.shards) {
      std::filesystem::copy_file(
          shard.path, older + "/" + std::filesystem::path(shard.path).filename().string());
    }
    if (layout.indexed && std::filesystem::is_directory(big_)) {
      for (const auto& entry : std::filesystem::directory_iterator(big_)) {
        if (entry.path().string().find(".index.json") != std::string::npos) {
          std::filesystem::copy_file(entry.path(), older + "/" + entry.path().filename().string());
        }
      }
    }
    const uint64_t step = 50 * o_.chunk_bytes;
    uint64_t total = 0;
    for (const auto& shard : layout.shards) {
      for (const auto& t : shard.tensors) total += t.size_bytes;
    }
    uint64_t stream = 0, next = std::min(step, total) / 2;  // a small model: one change
    for (const auto& shard : layout.shards) {
      std::fstream file(older + "/" + std::filesystem::path(shard.path).filename().string(),
                        std::ios::in | std::ios::out | std::ios::binary);
      for (const auto& t : shard.tensors) {
        for (; next < stream + t.size_bytes; next += step) {
          const auto at = static_cast<std::streamoff>(t.file_offset + (next - stream));
          file.seekg(at);
          const char byte = static_cast<char>(file.get() ^ 0x5a);
          file.seekp(at);
          file.put(byte);
        }
        stream += t.size_bytes;
      }
    }
    return older;
  }

 private:
  std::vector<int> Ks() const {
    return o_.quick ? std::vector<int>{1, 2} : std::vector<int>{1, 2, 4};
  }

  void Prepare() {
    if (o_.checkpoint.empty()) {
      big_ = dir_ + "/model";
      netloader::examples::CheckpointSpec spec;
      spec.total_bytes = static_cast<uint64_t>(o_.size_mib * (1 << 20));
      spec.tensors = o_.tensors;
      spec.seed = 7;
      Check(netloader::examples::GenerateCheckpoint(big_, spec), "generate");
    } else {
      big_ = o_.checkpoint;
    }
    for (int count : tiny_counts_) {
      netloader::examples::CheckpointSpec tiny;
      tiny.tensors = count;
      // The same bytes for every count (64 B per tensor at the largest), so the growth is
      // per tensor: a 256 KiB message costs MPI ~3 ms more than a 260-byte one (rendezvous
      // protocol), and fresh pages cost per byte; neither is netloader's per-tensor work.
      tiny.total_bytes = 64ull * tiny_counts_.back();
      const std::string path = dir_ + "/tiny" + std::to_string(count);
      Check(netloader::examples::GenerateCheckpoint(path, tiny), "generate");
      tiny_.push_back(path);
    }
  }

  void StartRendezvousAndServer() {
    // A --workdir used before still holds the last run's files: waiting for them must not find
    // those (a dead server's endpoints).
    std::filesystem::remove(dir_ + "/rendezvous.uri");
    std::filesystem::remove(dir_ + "/endpoints");
    rendezvous_ = std::make_unique<Child>(
        std::vector<std::string>{"/usr/bin/env", "OMPI_MCA_oob_tcp_if_include=lo", "ompi-server",
                                 "--no-daemonize", "-r", dir_ + "/rendezvous.uri"},
        dir_ + "/ompi-server");
    if (netloader::testing::WaitForLine(dir_ + "/rendezvous.uri", 20s).empty()) {
      Die("ompi-server did not start: " + rendezvous_->Stderr());
    }
    rendezvous_spec_ = "file:" + dir_ + "/rendezvous.uri";
    std::vector<std::string> argv = Role("serve");
    argv.insert(argv.end(), {"--endpoint-file", dir_ + "/endpoints", "--model", big_});
    for (const std::string& t : tiny_) argv.insert(argv.end(), {"--model", t});
    server_ = std::make_unique<Child>(argv, dir_ + "/server");
    if (netloader::testing::WaitForLine(dir_ + "/endpoints", 120s).empty()) {
      Die("server did not start: " + server_->Stderr());
    }
    std::istringstream lines(netloader::testing::ReadFile(dir_ + "/endpoints"));
    for (std::string line; std::getline(lines, line);) endpoints_.push_back(line);
  }

  void StopServer() {
    server_->Signal(SIGTERM);
    server_->Wait(20s);
  }

  std::vector<std::string> Role(const std::string& role) const {
    return {self_,
            "--role",
            role,
            "--rendezvous",
            rendezvous_spec_,
            "--chunk-mib",
            ChunkMibArgument(o_.chunk_bytes),
            "--window",
            std::to_string(o_.window)};
  }

  json RunChild(std::vector<std::string> argv, const std::string& name) {
    return RunRole(argv, dir_ + "/" + name, name, 300s);
  }

  // How a load row's client starts: MPI beforehand (preinit), while it allocates (overlap), or
  // inside Load; with the rendezvous configured or learnt from the source (adopt).
  struct LoadKind {
    bool verify = true;
    bool preinit = true;
    bool direct = false;
    bool overlap = false;
    bool adopt = false;
    std::vector<std::string> more_sources;  // tried after `endpoint`
    pid_t kill_pid = 0;                     // killed at half the load
    std::string delta_from;                 // an older copy to refresh
    std::vector<std::string> select;        // a partial load's tensor patterns
  };

  json Load(const std::string& model, const std::string& endpoint, LoadKind kind) {
    std::vector<std::string> argv = Role("load");
    if (kind.adopt) argv.erase(argv.begin() + 3, argv.begin() + 5);  // no --rendezvous
    argv.insert(argv.end(), {"--model", model, "--source", endpoint});
    if (kind.direct) argv.push_back("--direct");
    if (!kind.verify) argv.push_back("--no-verify");
    if (kind.preinit) argv.push_back("--preinit");
    if (kind.overlap) argv.push_back("--overlap");
    for (const std::string& more : kind.more_sources) argv.insert(argv.end(), {"--source", more});
    if (kind.kill_pid > 0) argv.insert(argv.end(), {"--kill-pid", std::to_string(kind.kill_pid)});
    if (!kind.delta_from.empty()) argv.insert(argv.end(), {"--delta-from", kind.delta_from});
    for (const std::string& pattern : kind.select) argv.insert(argv.end(), {"--select", pattern});
    const double server_cpu_before = ProcessCpuSeconds(server_pid());
    json out = RunChild(argv, "load");
    out["server_cpu_seconds"] = ProcessCpuSeconds(server_pid()) - server_cpu_before;
    out["gbps"] = out["bytes"].get<double>() / out["seconds"].get<double>() / 1e9;
    return out;
  }

  json Concurrent(int k) {
    std::vector<std::unique_ptr<Child>> clients;
    for (int i = 0; i < k; ++i) {
      std::vector<std::string> argv = Role("load");
      argv.insert(argv.end(), {"--model", big_, "--source", endpoints_[0], "--preinit"});
      clients.push_back(std::make_unique<Child>(argv, dir_ + "/c" + std::to_string(i)));
    }
    return Aggregate(clients, "concurrent client");
  }

  // Waits for K loaders started together: aggregate rate over the slowest, and its spread.
  static json Aggregate(std::vector<std::unique_ptr<Child>>& children, const std::string& what) {
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

  json RawStreams(int k) {
    const std::string port_file = dir_ + "/raw-port";
    for (int i = 0; i < k; ++i) std::remove((port_file + "." + std::to_string(i)).c_str());
    std::vector<std::string> send = Role("raw-send");
    send.insert(send.end(),
                {"--model", big_, "--port-file", port_file, "--peers", std::to_string(k)});
    Child sender(send, dir_ + "/raw-send");
    std::vector<std::unique_ptr<Child>> receivers;
    for (int i = 0; i < k; ++i) {
      std::vector<std::string> recv = Role("raw-recv");
      recv.insert(recv.end(),
                  {"--model", big_, "--port-file", port_file + "." + std::to_string(i)});
      receivers.push_back(std::make_unique<Child>(recv, dir_ + "/raw-recv" + std::to_string(i)));
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

  json Disk(bool cold) {
    std::vector<std::string> argv = Role("disk");
    argv.insert(argv.end(), {"--model", big_});
    if (cold) argv.push_back("--cold");
    json out = RunChild(argv, "disk");
    out["gbps"] = out["bytes"].get<double>() / out["seconds"].get<double>() / 1e9;
    return out;
  }

  long ServerStatusKiB(const char* key) const {
    std::ifstream status("/proc/" + std::to_string(server_pid()) + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind(key, 0) == 0) return std::stol(line.substr(std::strlen(key)));
    }
    return 0;
  }
  long ServerRssKiB() const { return ServerStatusKiB("VmRSS:"); }
  long ServerHwmKiB() const { return ServerStatusKiB("VmHWM:"); }
  pid_t server_pid() const {
    // The server role is the only child started with "--role serve".
    std::ifstream pid_file(dir_ + "/server.pid");
    pid_t pid = 0;
    pid_file >> pid;
    return pid;
  }

  // XXH3 over a warm 128 KiB block, as the client hashes each staged chunk: the CPU cost of
  // checksums without the transfer's noise.
  static double HashGbps() {
    std::vector<char> block(128 << 10);
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 31);
    constexpr int kRounds = 4096;  // 512 MiB
    volatile uint64_t sink = 0;    // keeps the hashing from being optimised away
    const auto start = Clock::now();
    for (int r = 0; r < kRounds; ++r) sink = sink + XXH3_64bits(block.data(), block.size());
    const double seconds = Since(start);
    return kRounds * block.size() / seconds / 1e9;
  }

  struct Loopback {
    double tcp_gbps = 0;
    double hash_received_gbps = 0;
  };
  // Raw TCP over loopback between two threads, two streams of 1 GiB in 4 MiB writes: what the
  // machine's loopback carries before any MPI (machines of one kind differ here), read into one
  // reused 4 MiB block; then XXH3 over data just received, read chunk by chunk into fresh
  // memory as a client receives in place and each chunk hashed once it is complete, timing the
  // hashing only. Right after the kernel's socket copy a chunk is not warm in cache: this is
  // what checksums cost a load, and what HashGbps (a warm block) does not show.
  static Loopback MeasureLoopback(uint64_t chunk_bytes) {
    const int listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (bind(listener, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        listen(listener, 1) != 0 ||
        getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      close(listener);
      return {};
    }
    constexpr size_t kBlock = 4 << 20, kTotal = 1ull << 30;
    // Neither accept nor a read waits more than 10 s (SO_RCVTIMEO covers both, and is inherited
    // by the accepted socket): a writer that failed to connect or stalled ends the measurement.
    const timeval deadline{10, 0};
    setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &deadline, sizeof deadline);
    std::thread writer([&] {
      const int fd = socket(AF_INET, SOCK_STREAM, 0);
      if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
        std::vector<char> block(kBlock, 1);
        for (size_t sent = 0; sent < 2 * kTotal;) {
          // MSG_NOSIGNAL: a reader that gave up and closed is an error here, not a SIGPIPE.
          const ssize_t n =
              send(fd, block.data(), std::min(kBlock, 2 * kTotal - sent), MSG_NOSIGNAL);
          if (n <= 0) break;
          sent += static_cast<size_t>(n);
        }
      }
      close(fd);
    });
    Loopback result;
    const int fd = accept(listener, nullptr, nullptr);
    if (fd >= 0) {
      std::vector<char> block(kBlock);
      size_t received = 0;
      const auto start = Clock::now();
      for (ssize_t n; received < kTotal &&
                      (n = read(fd, block.data(), std::min(kBlock, kTotal - received))) > 0;) {
        received += n;
      }
      result.tcp_gbps = received / Since(start) / 1e9;
      auto* destination = static_cast<char*>(netloader::MapHostMemory(kTotal));
      const size_t chunk = std::min<size_t>(std::max<uint64_t>(chunk_bytes, 4096), kTotal);
      double hash_seconds = 0;
      volatile uint64_t sink = 0;  // keeps the hashing from being optimised away
      size_t hashed = 0;
      auto read_fully = [&](char* to, size_t size) {
        for (size_t got = 0; got < size;) {
          const ssize_t n = read(fd, to + got, size - got);
          if (n <= 0) return false;
          got += static_cast<size_t>(n);
        }
        return true;
      };
      while (destination != nullptr && hashed < kTotal) {
        const size_t size = std::min(chunk, kTotal - hashed);
        if (!read_fully(destination + hashed, size)) break;
        const auto hash_start = Clock::now();
        sink = sink + XXH3_64bits(destination + hashed, size);
        hash_seconds += Since(hash_start);
        hashed += size;
      }
      if (hash_seconds > 0) result.hash_received_gbps = hashed / hash_seconds / 1e9;
      netloader::UnmapHostMemory(destination, kTotal);
    }
    close(fd);  // first: a writer still sending then fails instead of blocking the join
    writer.join();
    close(listener);
    return result;
  }

  // The CPU and the vector extensions that decide hashing speed, from /proc/cpuinfo; its family
  // and model numbers, which name the microarchitecture where a VM reports only "AMD EPYC"
  // (family 23 model 1 is Zen 1, whose 128-bit units run AVX2 no faster than SSE2); and the
  // first core's L2 and the L3, which decide whether a chunk just received is still in cache.
  static json Machine() {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string model, flags, family, number;
    for (std::string line; std::getline(cpuinfo, line) && flags.empty();) {
      auto value = [&] { return line.substr(line.find(':') + 2); };
      if (model.empty() && line.rfind("model name", 0) == 0) model = value();
      if (family.empty() && line.rfind("cpu family", 0) == 0) family = value();
      if (number.empty() && line.rfind("model\t", 0) == 0) number = value();
      if (line.rfind("flags", 0) == 0) flags = " " + value() + " ";
    }
    json vector = json::array();
    for (const char* f : {"sse4_2", "avx", "avx2", "avx512f", "avx512bw", "avx512vl"}) {
      if (flags.find(std::string(" ") + f + " ") != std::string::npos) vector.push_back(f);
    }
    json caches = json::object();
    for (int index = 0; index < 8; ++index) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
      std::string level, size;
      if (!(std::ifstream(dir + "/level") >> level) || !(std::ifstream(dir + "/size") >> size)) {
        break;
      }
      if (level == "2" || level == "3") caches["l" + level] = size;
    }
    return {{"cpu", model},
            {"cpu_family_model", family + "/" + number},
            {"caches", caches},
            {"vector_extensions", vector}};
  }

  // Seconds of `field` per 1,000 tensors: the least-squares slope over every sample of the
  // tiny models (one noisy median, such as an MPI connect, cannot make or break it).
  double GrowthPer1000(const std::string& field) const {
    double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int count : tiny_counts_) {
      for (const json& sample : samples_.at("overhead_" + std::to_string(count))) {
        const double x = count / 1000.0, y = sample[field].get<double>();
        n += 1, sx += x, sy += y, sxx += x * x, sxy += x * y;
      }
    }
    return (n * sxy - sx * sy) / (n * sxx - sx * sx);
  }

  int Report(uint64_t bytes, long server_rss_before, long server_hwm) {
    json out;
    utsname uts{};
    uname(&uts);
    out["config"] = {{"bytes", bytes},
                     {"tensors", tensor_count_},
                     {"checkpoint", o_.checkpoint.empty() ? "generated" : o_.checkpoint},
                     {"chunk_bytes", o_.chunk_bytes},
                     {"window", o_.window},
                     {"pml", "ucx (UCX_TLS=tcp, lo)"},
                     {"reps", o_.reps},
                     {"cores", std::thread::hardware_concurrency()},
                     {"kernel", std::string(uts.release)},
                     {"quick", o_.quick}};
    const double hash_gbps = HashGbps();
    const Loopback loopback = MeasureLoopback(o_.chunk_bytes);
    const double tcp_gbps = loopback.tcp_gbps;
    out["machine"] = Machine();
    out["machine"]["hash_gbps"] = hash_gbps;
    out["machine"]["hash_received_gbps"] = loopback.hash_received_gbps;
    out["machine"]["loopback_tcp_gbps"] = tcp_gbps;
    std::string extensions;
    for (const auto& e : out["machine"]["vector_extensions"]) {
      extensions += (extensions.empty() ? "" : " ") + e.get<std::string>();
    }
    std::string caches;
    for (const auto& [level, size] : out["machine"]["caches"].items()) {
      caches += ", " + level + " " + size.get<std::string>();
    }
    std::printf(
        "\nmachine: %s (family/model %s), %u cores (%s%s); XXH3 %.1f GB/s warm, %.1f GB/s on "
        "data just received; loopback TCP %.2f GB/s\n",
        out["machine"]["cpu"].get<std::string>().c_str(),
        out["machine"]["cpu_family_model"].get<std::string>().c_str(),
        std::thread::hardware_concurrency(), extensions.c_str(), caches.c_str(), hash_gbps,
        loopback.hash_received_gbps, tcp_gbps);
    std::printf("\n%-28s %9s %9s %9s %10s %12s\n", "measurement (GB/s)", "median", "min", "max",
                "vs raw MPI", "quartiles");
    std::printf("%-28s %9s %9s %9s %10s %12s\n", "", "", "", "", "(paired)", "of the pairs");
    auto row = [&](const std::string& name, const std::string& label) {
      if (!samples_.count(name)) return;
      Stat s = Of(name, "gbps");
      const std::vector<double> ratios = PairedRatios(name, "raw_mpi");
      const double ratio = Quantile(ratios, 0.5);
      const double q1 = Quantile(ratios, 0.25), q3 = Quantile(ratios, 0.75);
      std::printf("%-28s %9.2f %9.2f %9.2f %9.0f%% %5.0f-%.0f%%\n", label.c_str(), s.median, s.min,
                  s.max, 100 * ratio, 100 * q1, 100 * q3);
      out["results"][name] = {{"gbps_median", s.median},
                              {"gbps_min", s.min},
                              {"gbps_max", s.max},
                              {"vs_raw", ratio},
                              {"vs_raw_quartiles", {q1, q3}},
                              {"samples", samples_.at(name)}};
    };
    row("raw_mpi", "raw MPI (ceiling)");
    row("netloader", "netloader end to end");
    row("netloader_overlap", "  MPI started while allocating");
    row("netloader_adopt", "  rendezvous from the source");
    row("netloader_preinit", "  MPI started beforehand");
    row("netloader_no_checksum", "  checksums off");
    row("netloader_direct", "  received in place");
    row("disk_warm", "disk, page cache");
    row("disk_cold", "disk, cold");
    // Paired like the ratios: (on - off) / on = 1 - off_time / on_time = 1 - on_gbps / off_gbps.
    const double checksum_cost = 1 - PairedRatio("netloader_preinit", "netloader_no_checksum");
    // What hashing the model's bytes alone takes, as a share of the load: from a warm block, and
    // as the client meets them, just received.
    const double load_seconds = Of("netloader_preinit", "seconds").median;
    const double hash_share = bytes / (hash_gbps * 1e9) / load_seconds;
    const double received_share = loopback.hash_received_gbps > 0
                                      ? bytes / (loopback.hash_received_gbps * 1e9) / load_seconds
                                      : 0;
    std::printf(
        "checksum cost: %.1f%% of the load, paired (hashing alone: %.1f%% at %.1f GB/s warm, "
        "%.1f%% at %.1f GB/s on data just received)\n",
        100 * checksum_cost, 100 * hash_share, hash_gbps, 100 * received_share,
        loopback.hash_received_gbps);
    // Where "MPI started beforehand" loses against raw MPI, which times its data phase only: the
    // load's phases before its data (registering, the MPI connect), and the data phase itself.
    const double data_phase =
        PairedTimeRatio("raw_mpi", "seconds", "netloader_preinit", "transfer");
    const double before_data =
        1 - PairedTimeRatio("netloader_preinit", "transfer", "netloader_preinit", "seconds");
    std::printf(
        "MPI started beforehand, by phase: registering %.1f ms and connecting %.1f ms (raw MPI's "
        "own connect, not in its row: %.1f ms) are %.1f%% of the load; its data phase alone runs "
        "at %.0f%% of raw MPI (paired)\n",
        1e3 * Of("netloader_preinit", "register").median,
        1e3 * Of("netloader_preinit", "connect").median, 1e3 * Of("raw_mpi", "connect").median,
        100 * before_data, 100 * data_phase);
    out["summary"] = {{"preinit_vs_raw", PairedRatio("netloader_preinit", "raw_mpi")},
                      {"preinit_before_data_share", before_data},
                      {"preinit_data_phase_vs_raw", data_phase},
                      {"checksum_cost", checksum_cost},
                      {"hash_gbps", hash_gbps},
                      {"hash_received_gbps", loopback.hash_received_gbps},
                      {"hash_received_share", received_share}};
    // CPU per GB moved, each side: a figure that moves less between machines than GB/s.
    std::printf("\n%-28s %14s %14s\n", "CPU seconds per GB", "sending side", "receiving side");
    for (const auto& [name, label] : std::vector<std::pair<std::string, std::string>>{
             {"raw_mpi", "raw MPI"},
             {"netloader_preinit", "netloader, MPI beforehand"},
             {"netloader_no_checksum", "  checksums off"}}) {
      if (!samples_.count(name)) continue;
      const double gb = bytes / 1e9;
      const double send = Of(name, "server_cpu_seconds").median / gb;
      const double receive = Of(name, "cpu_seconds").median / gb;
      std::printf("%-28s %14.3f %14.3f\n", label.c_str(), send, receive);
      out["results"][name]["cpu_seconds_per_gb"] = {{"sending", send}, {"receiving", receive}};
    }
    if (o_.focus) {
      if (!o_.json_path.empty()) std::ofstream(o_.json_path) << out.dump(2) << "\n";
      return 0;
    }
    for (int k : Ks()) {
      const std::string n = "netloader_x" + std::to_string(k), r = "raw_mpi_x" + std::to_string(k);
      const double nl = Of(n, "gbps").median, rw = Of(r, "gbps").median;
      const double ratio = PairedRatio(n, r);
      std::printf("%-28s %9.2f %9s %9s %9.0f%%  (raw x%d: %.2f; slowest/fastest client %.2f)\n",
                  (std::to_string(k) + " clients, aggregate").c_str(), nl, "", "", 100 * ratio, k,
                  rw, Of(n, "spread").median);
      out["results"][n] = {{"gbps_median", nl},         {"raw_gbps_median", rw},
                           {"vs_raw", ratio},           {"spread_median", Of(n, "spread").median},
                           {"samples", samples_.at(n)}, {"raw_samples", samples_.at(r)}};
    }
    const double vs_cold_disk = PairedRatio("netloader", "disk_cold");
    std::printf("faster than a cold disk read: %.2fx (paired)\n", vs_cold_disk);
    std::printf("\n%-28s %10s %10s %10s %10s %10s\n", "fixed overhead (ms)", "total", "register",
                "connect", "transfer", "MPI start");
    for (size_t t = 0; t < tiny_counts_.size(); ++t) {
      const std::string n = "overhead_" + std::to_string(tiny_counts_[t]);
      std::printf("%-28s %10.1f %10.1f %10.1f %10.1f %10.1f\n",
                  (std::to_string(tiny_counts_[t]) + " tensors").c_str(),
                  1e3 * Of(n, "seconds").median, 1e3 * Of(n, "register").median,
                  1e3 * Of(n, "connect").median, 1e3 * Of(n, "transfer").median,
                  1e3 * Of(n, "transport").median);
      out["results"][n] = {{"seconds_median", Of(n, "seconds").median},
                           {"samples", samples_.at(n)}};
    }
    const double base = Of("overhead_" + std::to_string(tiny_counts_[0]), "seconds").median;
    const double per_1000 = GrowthPer1000("seconds");
    std::printf(
        "growth: %.2f ms per 1,000 tensors (least squares over every sample; register %+.2f, "
        "connect %+.2f, transfer %+.2f)\n",
        1e3 * per_1000, 1e3 * GrowthPer1000("register"), 1e3 * GrowthPer1000("connect"),
        1e3 * GrowthPer1000("transfer"));
    const double model_mib = bytes / double(1 << 20);
    const double client_rss_mib = Of("netloader", "max_rss_kib").median / 1024.0;
    const double server_extra_mib = (server_hwm - server_rss_before) / 1024.0;
    const int k_max = Ks().back();
    std::printf(
        "\nmemory: model %.0f MiB; client peak RSS %.0f MiB (model + %.0f); server peak "
        "grew %.0f MiB during %d concurrent clients (%.1f MiB per client; window %.2g MiB)\n",
        model_mib, client_rss_mib, client_rss_mib - model_mib, server_extra_mib, k_max,
        server_extra_mib / k_max, static_cast<double>(o_.chunk_bytes * o_.window) / (1 << 20));
    // Chunk-granular loads: paired per repetition like the ratios above.
    std::vector<double> extra, received;
    for (size_t i = 0; i < samples_.at("resume_killed").size(); ++i) {
      const json& killed = samples_.at("resume_killed")[i];
      extra.push_back(killed["seconds"].get<double>() -
                      samples_.at("resume_clean")[i]["seconds"].get<double>());
      received.push_back(killed["bytes_received"].get<double>() / bytes);
    }
    std::sort(extra.begin(), extra.end());
    std::sort(received.begin(), received.end());
    const double resume_extra = extra[extra.size() / 2];
    const double resume_received = received[received.size() / 2];
    const double delta_pulled = Of("delta", "pulled").median / bytes;
    const double delta_time = 1 / PairedRatio("delta", "delta_full");
    std::printf(
        "\nresume: the first of two sources killed at half the load: %.2f s against %.2f s clean "
        "(+%.2f s, paired; a killed source is noticed when its connection closes); received "
        "%.3fx the model's bytes\n",
        Of("resume_killed", "seconds").median, Of("resume_clean", "seconds").median, resume_extra,
        resume_received);
    std::printf(
        "delta: an older copy with ~2 %% of its chunks changed: %.2f %% of the bytes pulled "
        "(%.1f MiB); %.3f s against %.3f s for a full load (%.0f %%, paired)\n",
        100 * delta_pulled, Of("delta", "pulled").median / (1 << 20), Of("delta", "seconds").median,
        Of("delta_full", "seconds").median, 100 * delta_time);
    const double partial_bytes = Of("partial", "bytes").median / bytes;
    const double partial_time = PairedRatio("partial", "delta_full", "seconds");
    std::printf(
        "partial: the even-numbered layers (%.1f %% of the bytes): %.3f s against %.3f s for a "
        "full load (%.0f %%, paired); registering %.1f ms against %.1f ms (the source builds the "
        "selection's stream once, then caches it)\n",
        100 * partial_bytes, Of("partial", "seconds").median, Of("delta_full", "seconds").median,
        100 * partial_time, 1e3 * Of("partial", "register").median,
        1e3 * Of("delta_full", "register").median);
    for (const char* name : {"resume_clean", "resume_killed", "delta_full", "delta", "partial"}) {
      out["results"][name] = {{"seconds_median", Of(name, "seconds").median},
                              {"samples", samples_.at(name)}};
    }
    out["summary"].update({{"resume_extra_seconds", resume_extra},
                           {"resume_received_over_model", resume_received},
                           {"delta_pulled_fraction", delta_pulled},
                           {"delta_time_vs_full", delta_time},
                           {"partial_bytes_fraction", partial_bytes},
                           {"partial_time_vs_full", partial_time}});
    out["summary"].update({{"end_to_end_vs_raw", PairedRatio("netloader", "raw_mpi")},
                           {"overlap_vs_raw", PairedRatio("netloader_overlap", "raw_mpi")},
                           {"adopt_vs_raw", PairedRatio("netloader_adopt", "raw_mpi")},
                           {"vs_cold_disk", vs_cold_disk},
                           {"overhead_ms", 1e3 * base},
                           {"overhead_ms_per_1000_tensors", 1e3 * per_1000},
                           {"client_rss_over_model_mib", client_rss_mib - model_mib},
                           {"server_extra_mib_per_client", server_extra_mib / k_max}});
    if (!o_.json_path.empty()) std::ofstream(o_.json_path) << out.dump(2) << "\n";
    return 0;
  }

  Options o_;
  std::string self_;
  std::unique_ptr<netloader::testing::TempDir> tmp_;
  std::string dir_, big_, rendezvous_spec_, second_endpoint_;
  size_t tensor_count_ = 0;
  const std::vector<int> tiny_counts_ = {4, 1004, 4004};
  std::vector<std::string> tiny_;
  std::vector<std::string> endpoints_;
  std::unique_ptr<Child> rendezvous_, server_;
};

// Across simulated hosts (scripts/netns-hosts.sh; root only): three source hosts whose NICs are
// capped at host_mbit and a client host with four times that. Per repetition: raw MPI across one
// capped link, then netloader from 1, 2 and 3 sources at once (--stripe); ratios against raw
// MPI and against S x the cap.
class HostsBench : SampleTable {
 public:
  explicit HostsBench(Options options) : o_(std::move(options)) {}

  int Run() {
    self_ = std::filesystem::read_symlink("/proc/self/exe").string();
    const std::string rate = std::to_string(o_.host_mbit) + "mbit";
    hosts_ = std::make_unique<netloader::testing::Hosts>(
        std::vector<std::string>{rate, rate, rate, std::to_string(4 * o_.host_mbit) + "mbit"});
    if (!hosts_->ok()) Die("cannot build simulated hosts (root needed): " + hosts_->why());
    g_cleanup = [this] { hosts_.reset(); };
    dir_ = o_.workdir.empty() ? tmp_.path() : o_.workdir;
    setenv("NETLOADER_SECRET_FILE", (tmp_.path() + "/secret").c_str(), 1);
    model_ = o_.checkpoint.empty() ? dir_ + "/model" : o_.checkpoint;
    if (o_.checkpoint.empty()) {
      netloader::examples::CheckpointSpec spec;
      spec.total_bytes = static_cast<uint64_t>(o_.size_mib * (1 << 20));
      spec.tensors = o_.tensors;
      spec.seed = 7;
      Check(netloader::examples::GenerateCheckpoint(model_, spec), "generate");
    }
    rendezvous_ = std::make_unique<netloader::testing::Rendezvous>(tmp_, hosts_->bridge());
    if (!rendezvous_->ready()) Die("ompi-server did not start on the bridge");
    std::vector<std::unique_ptr<Child>> servers;
    for (int h = 0; h < 3; ++h) {
      // One directory per host: the serve role writes its pid file next to its endpoint file.
      const std::string host_dir = dir_ + "/host" + std::to_string(h);
      std::filesystem::create_directories(host_dir);
      std::filesystem::remove(host_dir + "/endpoints");
      std::vector<std::string> argv = Role("serve");
      argv.insert(argv.end(), {"--endpoint-file", host_dir + "/endpoints", "--model", model_,
                               "--listen", "tcp://" + hosts_->address(h) + ":0"});
      servers.push_back(std::make_unique<Child>(hosts_->On(h, argv), host_dir + "/server"));
      const std::string endpoint = netloader::testing::WaitForLine(host_dir + "/endpoints", 120s);
      if (endpoint.empty()) Die("server on host " + std::to_string(h) + " did not start");
      endpoints_.push_back(endpoint);
    }
    const uint64_t bytes = FileDataBytes(model_, nullptr);
    std::fprintf(stderr, "hosts: 3 sources at %d Mbit/s, a client at %d Mbit/s; model %s\n",
                 o_.host_mbit, 4 * o_.host_mbit, Human(bytes).c_str());
    for (int rep = 0; rep < o_.reps; ++rep) {
      std::fprintf(stderr, "repetition %d/%d\n", rep + 1, o_.reps);
      Add("raw_mpi", RawAcross());
      for (int s = 1; s <= 3; ++s) Add("stripe_" + std::to_string(s), LoadFrom(s));
    }
    servers.clear();
    g_cleanup = nullptr;
    return Report(bytes);
  }

 private:
  std::vector<std::string> Role(const std::string& role) const {
    return {self_,
            "--role",
            role,
            "--rendezvous",
            rendezvous_->spec(),
            "--chunk-mib",
            ChunkMibArgument(o_.chunk_bytes),
            "--window",
            std::to_string(o_.window),
            "--interface",
            "nlv"};
  }

  json RunOn(int host, std::vector<std::string> argv, const std::string& name) {
    return RunRole(hosts_->On(host, std::move(argv)), dir_ + "/" + name, name, 600s);
  }

  // Raw MPI from host 0 to the client host: the capped link's ceiling for one stream.
  json RawAcross() {
    const std::string port_file = dir_ + "/raw-port";
    std::filesystem::remove(port_file + ".0");
    std::vector<std::string> send = Role("raw-send");
    send.insert(send.end(), {"--model", model_, "--port-file", port_file, "--peers", "1"});
    Child sender(hosts_->On(0, send), dir_ + "/raw-send");
    std::vector<std::string> recv = Role("raw-recv");
    recv.insert(recv.end(), {"--model", model_, "--port-file", port_file + ".0"});
    json out = RunOn(3, recv, "raw-recv");
    if (sender.Wait(120s) != 0) Die("raw sender failed: " + sender.Stderr());
    out["gbps"] = out["bytes"].get<double>() / out["seconds"].get<double>() / 1e9;
    return out;
  }

  // netloader on the client host from the first `stripe` source hosts at once, MPI started
  // beforehand (as against raw MPI, whose start-up is not timed either).
  json LoadFrom(int stripe) {
    std::vector<std::string> argv = Role("load");
    argv.insert(argv.end(), {"--model", model_, "--preinit", "--stripe", std::to_string(stripe)});
    for (int h = 0; h < stripe; ++h) argv.insert(argv.end(), {"--source", endpoints_[h]});
    json out = RunOn(3, argv, "load");
    out["gbps"] = out["bytes"].get<double>() / out["seconds"].get<double>() / 1e9;
    return out;
  }

  int Report(uint64_t bytes) {
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
    const double raw = Of("raw_mpi", "gbps").median;
    std::printf("%-34s %9.3f %11.0f%% %11.0f%%\n", "raw MPI across one capped link", raw, 100.0,
                100 * raw / cap_gbps);
    out["results"]["raw_mpi"] = {{"gbps_median", raw}, {"samples", samples_.at("raw_mpi")}};
    for (int s = 1; s <= 3; ++s) {
      const std::string name = "stripe_" + std::to_string(s);
      const double gbps = Of(name, "gbps").median;
      const double vs_raw = PairedRatio(name, "raw_mpi");
      std::printf("%-34s %9.3f %11.0f%% %11.0f%%\n",
                  ("netloader, " + std::to_string(s) + " source" + (s > 1 ? "s" : "")).c_str(),
                  gbps, 100 * vs_raw, 100 * gbps / (s * cap_gbps));
      out["results"][name] = {{"gbps_median", gbps},
                              {"vs_raw", vs_raw},
                              {"vs_caps", gbps / (s * cap_gbps)},
                              {"samples", samples_.at(name)}};
    }
    if (!o_.json_path.empty()) std::ofstream(o_.json_path) << out.dump(2) << "\n";
    return 0;
  }

  Options o_;
  std::string self_, dir_, model_;
  netloader::testing::TempDir tmp_;
  std::unique_ptr<netloader::testing::Hosts> hosts_;
  std::unique_ptr<netloader::testing::Rendezvous> rendezvous_;
  std::vector<std::string> endpoints_;
};

// A burst across simulated hosts (scripts/netns-hosts.sh; root only), every host's NIC capped at
// the same rate: one seed on host 0 and K = 1, 2, 4, ... new instances on hosts 1..K, started at
// once. T(K) is from their start until the last one has verified every byte. Three ways, per
// repetition: relay (the shipped netloader-server and netloader-client --serve: a chain built by
// redirects), direct (everyone from the seed: --fanout 0, no --serve) and storage (every
// instance reads the files from one host over TCP, as from one NFS server). The seed's egress is
// its NIC's transmitted bytes over the model's.
class FanoutBench : SampleTable {
 public:
  explicit FanoutBench(Options options) : o_(std::move(options)) {}

  int Run() {
    self_ = std::filesystem::read_symlink("/proc/self/exe").string();
    bin_ = netloader::testing::BinDir();
    const std::string rate = std::to_string(o_.fanout_mbit) + "mbit";
    hosts_ = std::make_unique<netloader::testing::Hosts>(
        std::vector<std::string>(static_cast<size_t>(o_.max_k) + 1, rate));
    if (!hosts_->ok()) Die("cannot build simulated hosts (root needed): " + hosts_->why());
    g_cleanup = [this] {
      Stop();
      hosts_.reset();
    };
    dir_ = o_.workdir.empty() ? tmp_.path() : o_.workdir;
    setenv("NETLOADER_SECRET_FILE", (tmp_.path() + "/secret").c_str(), 1);
    model_ = o_.checkpoint.empty() ? dir_ + "/model" : o_.checkpoint;
    if (o_.checkpoint.empty()) {
      netloader::examples::CheckpointSpec spec;
      spec.total_bytes = static_cast<uint64_t>((o_.size_given ? o_.size_mib : 256) * (1 << 20));
      spec.tensors = o_.size_given ? o_.tensors : 300;
      spec.seed = 11;
      Check(netloader::examples::GenerateCheckpoint(model_, spec), "generate");
    }
    bytes_ = FileDataBytes(model_, nullptr);
    rendezvous_ = std::make_unique<netloader::testing::Rendezvous>(tmp_, hosts_->bridge());
    if (!rendezvous_->ready()) Die("ompi-server did not start on the bridge");
    std::vector<int> ks;
    for (int k = 1; k <= o_.max_k; k *= 2) ks.push_back(k);
    std::fprintf(stderr, "fan-out: %d hosts at %d Mbit/s each; model %s; K = 1..%d\n", o_.max_k + 1,
                 o_.fanout_mbit, Human(bytes_).c_str(), ks.back());
    for (int rep = 0; rep < o_.reps; ++rep) {
      for (const std::string& mode : o_.modes) {
        for (int k : ks) {
          std::fprintf(stderr, "repetition %d/%d: %s, K = %d\n", rep + 1, o_.reps, mode.c_str(), k);
          Add(mode + "_" + std::to_string(k), Burst(mode, k));
        }
      }
    }
    Stop();
    g_cleanup = nullptr;
    return Report(ks);
  }

 private:
  // Bytes host `host`'s NIC has transmitted.
  uint64_t TxBytes(int host) {
    Child cat(hosts_->On(host, {"cat", "/sys/class/net/nlv/statistics/tx_bytes"}), dir_ + "/tx");
    if (cat.Wait(30s) != 0) Die("cannot read host " + std::to_string(host) + "'s NIC counters");
    return std::stoull(cat.Stdout());
  }

  // The seed on host 0 (a netloader-server, or the storage host); waits until it listens.
  std::string StartSeed(const std::string& mode, int k) {
    const std::string endpoint_file = dir_ + "/seed-endpoint";
    std::filesystem::remove(endpoint_file);
    const std::string address = hosts_->address(0);
    std::vector<std::string> argv;
    if (mode == "storage") {
      argv = {self_,      "--role", "storage-serve",   "--model",    model_,
              "--listen", address,  "--endpoint-file", endpoint_file};
    } else {
      argv = {bin_ + "/netloader-server",
              "--model",
              model_,
              "--listen",
              "tcp://" + address + ":7000",
              "--endpoint-file",
              endpoint_file,
              "--rendezvous",
              rendezvous_->spec(),
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
    }
    seed_ = std::make_unique<Child>(hosts_->On(0, argv), dir_ + "/seed");
    const std::string endpoint = netloader::testing::WaitForLine(endpoint_file, 120s);
    if (endpoint.empty()) Die("the seed did not start: " + seed_->Stderr());
    return endpoint;
  }

  // K instances started at once; until the last one verified every byte.
  // K instances, each started and made ready (MPI up, memory allocated), then let go at once:
  // until the last one verified every byte. On real hosts the K start-ups run in parallel; here
  // they share two cores, so they are not part of T.
  json Burst(const std::string& mode, int k) {
    const std::string seed = StartSeed(mode, k);
    const std::string go = dir_ + "/go";
    std::filesystem::remove(go);
    ++bursts_;
    for (int i = 1; i <= k; ++i) {
      std::vector<std::string> argv;
      if (mode == "storage") {
        argv = {self_,      "--role", "storage-read", "--model", model_,
                "--source", seed,     "--start-file", go};
      } else {
        argv = {bin_ + "/netloader-client",
                "--model",
                model_,
                "--source",
                seed,
                "--verify-only",
                "--rendezvous",
                rendezvous_->spec(),
                "--interface",
                "nlv",
                "--json",
                "--log-level",
                "warn",
                "--testing-start-file",
                go,
                "--window",
                std::to_string(o_.window)};
        if (mode == "relay") {
          argv.insert(argv.end(), {"--serve", "tcp://" + hosts_->address(i) + ":7000", "--fanout",
                                   std::to_string(o_.tree_fanout)});
        }
      }
      // Logs of their own: a reused name could show the last burst's summary.
      instances_.push_back(std::make_unique<Child>(
          hosts_->On(i, argv), dir_ + "/" + mode + "-k" + std::to_string(k) + "-" +
                                   std::to_string(bursts_) + "-" + std::to_string(i)));
    }
    for (auto& instance : instances_) {
      if (!netloader::testing::WaitFor(
              [&] { return instance->Stderr().find("ready") != std::string::npos; }, 300s)) {
        Die(mode + " instance did not get ready: " + instance->Stderr());
      }
    }
    const uint64_t tx_before = TxBytes(0);
    const auto start = Clock::now();
    netloader::testing::WriteFile(go, "");
    // Each instance prints its summary once it holds every byte (a relay then goes on serving).
    std::vector<double> done(static_cast<size_t>(k), -1);
    json loads = json::array();
    const auto deadline = Clock::now() + 600s;
    for (int left = k; left > 0;) {
      if (Clock::now() > deadline) Die(mode + " K=" + std::to_string(k) + " did not finish");
      for (int i = 0; i < k; ++i) {
        if (done[i] >= 0) continue;
        Child& instance = *instances_[i];
        const std::vector<json> lines = netloader::testing::JsonLines(instance.Stdout());
        if (lines.empty()) {
          if (!instance.Running()) Die(mode + " instance failed: " + instance.Stderr());
          continue;
        }
        done[i] = Since(start);
        if (lines[0].value("ok", false) != true) Die(mode + " instance failed: " + lines[0].dump());
        loads.push_back(lines[0]);
        --left;
      }
      std::this_thread::sleep_for(10ms);  // polling the summaries; bounded by the deadline
    }
    const double egress = static_cast<double>(TxBytes(0) - tx_before) / bytes_;
    Stop();
    json out = {{"seconds", *std::max_element(done.begin(), done.end())},
                {"first_seconds", *std::min_element(done.begin(), done.end())},
                {"seed_egress_models", egress},
                {"instances", loads}};
    std::fprintf(stderr, "  %.2f s, seed egress %.2f models\n", out["seconds"].get<double>(),
                 egress);
    return out;
  }

  // Ends the instances and the seed of a burst.
  void Stop() {
    for (auto& instance : instances_) instance->Signal(SIGTERM);
    for (auto& instance : instances_) instance->Wait(30s);
    instances_.clear();
    if (seed_) {
      seed_->Signal(SIGTERM);
      seed_->Wait(30s);
      seed_.reset();
    }
  }

  int Report(const std::vector<int>& ks) {
    json out;
    out["config"] = {{"bytes", bytes_},
                     {"host_mbit", o_.fanout_mbit},
                     {"reps", o_.reps},
                     {"chunk_bytes", netloader::ServerOptions{}.chunk_bytes},
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
      const std::string one = mode + "_1";
      for (int k : ks) {
        const std::string name = mode + "_" + std::to_string(k);
        const double seconds = Of(name, "seconds").median;
        const double ratio = PairedRatio(name, one, "seconds");
        const double egress = Of(name, "seed_egress_models").median;
        std::printf("%-8s %3d %10.2f %12.2f %18.2f\n", mode.c_str(), k, seconds, ratio, egress);
        out["fanout"].push_back({{"k", k},
                                 {"mode", mode},
                                 {"seconds", seconds},
                                 {"ratio_to_k1", ratio},
                                 {"seed_egress_models", egress},
                                 {"samples", samples_.at(name)}});
      }
    }
    if (!o_.json_path.empty()) std::ofstream(o_.json_path) << out.dump(2) << "\n";
    return 0;
  }

  Options o_;
  std::string self_, bin_, dir_, model_;
  uint64_t bytes_ = 0;
  int bursts_ = 0;
  netloader::testing::TempDir tmp_;
  std::unique_ptr<netloader::testing::Hosts> hosts_;
  std::unique_ptr<netloader::testing::Rendezvous> rendezvous_;
  std::unique_ptr<Child> seed_;
  std::vector<std::unique_ptr<Child>> instances_;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "netloader-bench: netloader against raw MPI, disk and itself, in one run.\n"
      "Generates a Llama-shaped checkpoint, starts a rendezvous and a server, then measures in\n"
      "fresh processes, interleaved over repetitions: raw MPI (the ceiling), netloader end to\n"
      "end (with MPI started beforehand or not, checksums on or off), disk (warm and cold),\n"
      "K concurrent clients against K raw streams, fixed overhead by tensor count, and memory.\n"
      "Prints a table of medians and ratios; --json writes the same with every sample."};
  Options o;
  RoleArgs role;
  // The library's defaults, which is what users get.
  double chunk_mib = static_cast<double>(netloader::ServerOptions{}.chunk_bytes) / (1 << 20);
  app.add_flag("--quick", o.quick, "Small model, 2 repetitions: a smoke run under a minute");
  app.add_flag("--focus", o.focus,
               "Measure only raw MPI and netloader with MPI pre-started (for tuning runs)");
  app.add_option("--size-mib", o.size_mib, "Model size in MiB")->capture_default_str();
  app.add_option("--tensors", o.tensors, "Number of tensors")->capture_default_str();
  app.add_option("--reps", o.reps, "Repetitions")->check(CLI::Range(1, 100))->capture_default_str();
  app.add_option("--chunk-mib", chunk_mib, "Chunk size in MiB (netloader and raw MPI)")
      ->capture_default_str();
  app.add_option("--window", o.window, "Messages in flight (netloader and raw MPI)")
      ->capture_default_str();
  app.add_option("--json", o.json_path, "Write the results as JSON to this file");
  app.add_option("--checkpoint", o.checkpoint,
                 "Measure this checkpoint (a .safetensors file, or a directory of shards) instead "
                 "of generating one; --size-mib and --tensors are then ignored")
      ->check(CLI::ExistingPath);
  app.add_option("--workdir", o.workdir, "Where to put the checkpoints (default: a temp dir)");
  app.add_flag("--hosts", o.hosts,
               "Measure across simulated hosts instead (root only): three source hosts with NICs "
               "capped at --host-mbit and a client host with four times that, as network "
               "namespaces (scripts/netns-hosts.sh); raw MPI across one capped link, and netloader "
               "from 1, 2 and 3 sources at once (--stripe)");
  app.add_option("--host-mbit", o.host_mbit, "With --hosts: each source host's NIC, Mbit/s")
      ->check(CLI::Range(10, 100000))
      ->capture_default_str();
  app.add_flag("--fanout", o.fanout,
               "Measure relay fan-out instead (root only): one seed and K = 1, 2, 4, ... new "
               "instances started at once on simulated hosts whose NICs are all capped at "
               "--fanout-mbit; T(K)/T(1) and the seed's egress for relaying (netloader-client "
               "--serve), everyone from the seed, and one shared storage host (256 MiB model "
               "unless --size-mib is given)");
  app.add_option("--fanout-mbit", o.fanout_mbit, "With --fanout: every host's NIC, Mbit/s")
      ->check(CLI::Range(10, 100000))
      ->capture_default_str();
  app.add_option("--max-k", o.max_k,
                 "With --fanout: the largest K (at most 9 hosts besides the seed)")
      ->check(CLI::Range(1, 9))
      ->capture_default_str();
  app.add_option("--tree-fanout", o.tree_fanout,
                 "With --fanout: the seed's and every relay's --fanout in relay mode")
      ->check(CLI::Range(1, 8))
      ->capture_default_str();
  app.add_option("--modes", o.modes, "With --fanout: which of relay, direct, storage to measure")
      ->check(CLI::IsMember({"relay", "direct", "storage"}))
      ->capture_default_str();
  // Internal: the processes being measured.
  app.add_option("--role", role.role)->group("");
  app.add_option("--rendezvous", role.rendezvous)->group("");
  app.add_option("--model", role.models)->group("");
  app.add_option("--source", role.sources)->group("");
  app.add_option("--kill-pid", role.kill_pid)->group("");
  app.add_option("--interface", role.interface)->group("");
  app.add_option("--listen", role.listen)->group("");
  app.add_option("--stripe", role.stripe)->group("");
  app.add_option("--delta-from", role.delta_from)->group("");
  app.add_option("--select", role.select)->group("");
  app.add_option("--port-file", role.port_file)->group("");
  app.add_option("--endpoint-file", role.endpoint_file)->group("");
  app.add_option("--start-file", role.start_file)->group("");
  app.add_option("--peers", role.peers)->group("");
  app.add_flag("--preinit", role.preinit)->group("");
  app.add_flag("--overlap", role.overlap)->group("");
  app.add_flag("--cold", role.cold)->group("");
  app.add_flag("--direct", role.direct)->group("");
  bool no_verify = false;
  app.add_flag("--no-verify", no_verify)->group("");
  CLI11_PARSE(app, argc, argv);
  o.chunk_bytes = static_cast<uint64_t>(std::llround(chunk_mib * (1 << 20)));
  role.chunk_bytes = o.chunk_bytes;
  role.window = o.window;
  role.verify = !no_verify;

  netloader::SetLogLevel(netloader::LogLevel::kWarn);
  static const std::string who = "netloader-bench --role " + role.role;
  if (!role.role.empty()) netloader::testing::InstallCrashReporter(who.c_str());
  if (role.role == "serve") {
    std::ofstream(std::filesystem::path(role.endpoint_file).parent_path() / "server.pid")
        << getpid();
    return RoleServe(role);
  }
  if (role.role == "load") return RoleLoad(role);
  if (role.role == "raw-send") return RoleRawSend(role);
  if (role.role == "raw-recv") return RoleRawRecv(role);
  if (role.role == "disk") return RoleDisk(role);
  if (role.role == "storage-serve") return RoleStorageServe(role);
  if (role.role == "storage-read") return RoleStorageRead(role);
  if (!role.role.empty()) Die("unknown role " + role.role);
  if (o.quick) {
    o.size_mib = 64;
    o.tensors = 300;
    o.reps = 2;
  }
  o.size_given = app.count("--size-mib") > 0;
  if (o.hosts) return HostsBench(o).Run();
  if (o.fanout) return FanoutBench(o).Run();
  return Bench(o).Run();
}
