#pragma once

// Pieces shared by the netloader-server and netloader-client command lines: exit codes, the
// flags both take, and a terminal progress line. Not part of the library.

#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "netloader/limits.h"
#include "netloader/logging.h"
#include "netloader/metrics.h"
#include "netloader/options.h"
#include "netloader/secret.h"
#include "netloader/server.h"
#include "netloader/status.h"
#include "netloader/tensor.h"

namespace netloader::cli {

// Documented in both CLIs' --help and in docs/usage.md, "Exit codes".
enum ExitCode {
  kExitOk = 0,
  kExitFailure = 1,      // internal error
  kExitUsage = 2,        // bad flags, or an unusable secret file
  kExitBadModel = 3,     // --model missing or malformed
  kExitRefused = 4,      // every source refused: fingerprint/protocol mismatch, other secret
  kExitUnavailable = 5,  // no source reachable, busy, timed out; or the server could not start
  kExitCorrupt = 6,      // transfer failed or data did not match its checksums
  kExitOutput = 7,       // --output would replace a file, writing it failed, or it read back wrong
};

inline const char* kExitCodeHelp =
    "Exit codes: 0 ok, 1 internal error, 2 bad flags (or an unusable secret file), 3 --model "
    "(or the client's --delta-from) missing or malformed, 4 refused (fingerprint or protocol "
    "mismatch, or the shared secrets "
    "differ), 5 unavailable (unreachable, busy, timeout, start-up failed), 6 transfer or checksum "
    "failure, 7 --output would replace an existing file (give --overwrite), writing it failed, or "
    "it did not read back as the source's bytes.";

inline int ExitCodeFor(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return kExitOk;
    case StatusCode::kInvalidArgument:
    case StatusCode::kNotFound:
      return kExitBadModel;
    case StatusCode::kFingerprintMismatch:
    case StatusCode::kProtocolMismatch:
    case StatusCode::kPermissionDenied:
      return kExitRefused;
    case StatusCode::kUnavailable:
    case StatusCode::kTimeout:
    case StatusCode::kBusy:
    case StatusCode::kCancelled:
      return kExitUnavailable;
    case StatusCode::kChecksumMismatch:
    case StatusCode::kTransferFailed:
      return kExitCorrupt;
    case StatusCode::kInternal:
      return kExitFailure;
  }
  return kExitFailure;
}

// --log-level, shared by the CLIs and the example engine.
inline void AddLogLevelOption(CLI::App& app, std::string* level) {
  app.add_option("--log-level", *level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
      ->capture_default_str();
}

inline void ApplyLogLevel(const std::string& level) {
  static const std::map<std::string, LogLevel> levels = {
      {"trace", LogLevel::kTrace}, {"debug", LogLevel::kDebug}, {"info", LogLevel::kInfo},
      {"warn", LogLevel::kWarn},   {"error", LogLevel::kError}, {"off", LogLevel::kOff}};
  SetLogLevel(levels.at(level));
}

inline constexpr const char* kSecretHelp =
    "The shared secret every server and client of a deployment holds: a client without it "
    "learns nothing from a server, and the control plane is encrypted (CURVE). Created with a "
    "fresh random key (mode 0600) if the file does not exist; copy it to every machine. Default: "
    "$NETLOADER_SECRET_FILE, else ~/.config/netloader/secret";
inline constexpr const char* kNoAuthHelp =
    "Run without the shared secret: no authentication and no encryption, so anyone who reaches "
    "the port can pull the weights. For local tests; both sides must agree";

// Flags both CLIs share, bound to the options they fill.
struct CommonFlags {
  Partition partition;
  std::string model_id;
  std::string log_level = "info";
  bool json = false;
  std::string secret_file = DefaultSecretPath();
  bool no_auth = false;
  double heartbeat_timeout_s = ToSeconds(PeerOptions().heartbeat_timeout);
  int window = PeerOptions().window;
  double connect_timeout_s = ToSeconds(PeerOptions().connect_timeout);
  double stall_timeout_s = ToSeconds(PeerOptions().stall_timeout);
  TransportOptions transport;
  std::string registry;
  std::string topology;
  std::string metrics_listen;

  void Add(CLI::App& app) {
    app.add_option("--model-id", model_id,
                   "Model id/revision for the fingerprint (e.g. org/name@rev); a client that sets "
                   "it is only served by a server that declares the same");
    app.add_option("--tp-size", partition.tp_size, "Tensor-parallel world size")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--tp-rank", partition.tp_rank, "This process's tensor-parallel rank")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--pp-size", partition.pp_size, "Pipeline-parallel world size")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--pp-rank", partition.pp_rank, "This process's pipeline stage")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--layout-key", partition.layout_key,
                   "Any further layout both sides must share (e.g. an expert placement)");
    app.add_option("--rendezvous", transport.rendezvous_uri,
                   "MPI rendezvous: an ompi-server URI or file:PATH of the file `ompi-server -r` "
                   "wrote. Default: the server starts a private one and clients adopt it; with "
                   "--mpi-helpers each source may have its own");
    app.add_flag("--mpi-helpers", transport.mpi_helpers,
                 "Run MPI in netloader-mpi-helper processes, never in this one: no shared "
                 "--rendezvous needed (each source and server gets its own), a crash in MPI "
                 "costs only the transfers it carried, memory stays flat. Loads run at 2/3 to 3/4 "
                 "of the in-process speed on 2-core VMs");
    app.add_option("--registry", registry,
                   "etcd client URL (http://HOST:PORT[/PREFIX]) of the fleet's registry: a "
                   "server publishes itself there while it serves; a client finds its sources "
                   "there (ready holders of its model and partition with a free slot, its "
                   "--topology first), before any --source. Without etcd, a client uses --source "
                   "and a server serves unlisted, retrying")
        ->type_name("URL");
    app.add_option("--topology", topology,
                   "A label such as a rack or zone: a server publishes it, a client prefers "
                   "holders that share it")
        ->type_name("LABEL");
    app.add_option("--metrics-listen", metrics_listen,
                   "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one; the "
                   "address is logged): bytes sent and received, loads and sessions by result, "
                   "load durations, verification failures, redirects, registry calls")
        ->type_name("HOST:PORT");
    app.add_option("--interface", transport.interface,
                   "Network interface MPI uses (lo for one host)")
        ->capture_default_str();
    app.add_option(
           "--heartbeat-timeout", heartbeat_timeout_s,
           "Seconds without a heartbeat (one a second, from registration until the client's "
           "verdict) after which the other side is presumed dead and the transfer stops")
        ->check(CLI::Range(ToSeconds(kMinHeartbeatTimeout), 86400.0))
        ->capture_default_str();
    app.add_option("--window", window, "MPI messages in flight per transfer")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    app.add_option("--connect-timeout", connect_timeout_s,
                   "Seconds for the MPI connection once a client is accepted")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--stall-timeout", stall_timeout_s,
                   "Seconds without progress after which a transfer is abandoned")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    auto* secret = app.add_option("--secret-file", secret_file, kSecretHelp)->capture_default_str();
    app.add_flag("--no-auth", no_auth, kNoAuthHelp)->excludes(secret);
    AddLogLevelOption(app, &log_level);
    app.add_flag("--json", json, "Print the final summary as one JSON object on stdout");
  }

  void ApplyLogLevel() const { netloader::cli::ApplyLogLevel(log_level); }

  // Serves the metrics if --metrics-listen asks for them, saying where on stderr.
  Status StartMetrics(const char* program) const {
    if (metrics_listen.empty()) return Status::Ok();
    Result<std::string> at = ServeMetrics(metrics_listen);
    if (!at.ok()) return at.status().WithContext("--metrics-listen");
    std::fprintf(stderr, "%s: metrics at http://%s/metrics\n", program, at->c_str());
    return Status::Ok();
  }

  // Copies these flags into ServerOptions or ClientOptions, reading (or creating) the secret
  // file. Errors: the secret file's, naming it.
  Status ApplyTo(PeerOptions& options) const {
    options.model_id = model_id;
    options.partition = partition;
    options.transport = transport;
    options.registry = registry;
    options.topology = topology;
    options.heartbeat_timeout = FromSeconds(heartbeat_timeout_s);
    options.window = window;
    options.connect_timeout = FromSeconds(connect_timeout_s);
    options.stall_timeout = FromSeconds(stall_timeout_s);
    if (no_auth) return Status::Ok();
    Result<std::string> secret = LoadOrCreateSecret(secret_file);
    if (!secret.ok()) return secret.status();
    options.secret = *secret;
    return Status::Ok();
  }
};

inline std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char text[32];
  std::snprintf(text, sizeof text, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
  return text;
}

// A one-line progress display on stderr, drawn only when stderr is a terminal, at most 10x/s.
class ProgressLine {
 public:
  ProgressLine() : enabled_(isatty(STDERR_FILENO)) {}
  void Update(const std::string& text, bool force = false) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    std::fprintf(stderr, "\r\033[K%s", text.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }
  void Bar(uint64_t done, uint64_t total, double seconds) {
    if (!enabled_) return;
    const double fraction = total ? static_cast<double>(done) / total : 1.0;
    const int width = 30;
    std::string bar(static_cast<size_t>(fraction * width), '#');
    bar.resize(width, '.');
    char text[160];
    std::snprintf(text, sizeof text, "[%s] %5.1f%%  %s / %s  %.2f GB/s", bar.c_str(),
                  fraction * 100, HumanBytes(done).c_str(), HumanBytes(total).c_str(),
                  seconds > 0 ? done / seconds / 1e9 : 0.0);
    Update(text, done == total);
  }
  void Finish() {
    if (drawn_) std::fprintf(stderr, "\n");
    drawn_ = false;
  }

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

// SIGINT and SIGTERM, blocked in the calling thread and every thread it starts afterwards (call
// it before any), so that ServeUntilStopped alone takes them.
inline sigset_t BlockStopSignals() {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  return stop;
}

// Writes `endpoint` to `file` (nothing when it is empty) under a temporary name first, so that
// a reader never sees a partial line.
inline void WriteEndpointFile(const std::string& file, const std::string& endpoint) {
  if (file.empty()) return;
  std::ofstream(file + ".tmp") << endpoint << "\n";
  std::rename((file + ".tmp").c_str(), file.c_str());
}

// Serves until one of `stop` (BlockStopSignals) arrives, with a status line; then stops the
// server. Returns the signal's name.
inline std::string ServeUntilStopped(Server& server, const sigset_t& stop) {
  ProgressLine status_line;
  int signal_number = 0;
  while (true) {
    const timespec tick{1, 0};
    siginfo_t info;
    signal_number = sigtimedwait(&stop, &info, &tick);
    if (signal_number > 0) break;
    const ServerStats s = server.stats();
    status_line.Update("serving: " + std::to_string(s.active_transfers) + " active, " +
                       std::to_string(s.clients_served) + " served, " +
                       std::to_string(s.clients_failed) + " failed, " +
                       std::to_string(s.redirected) + " redirected, " + HumanBytes(s.bytes_sent) +
                       " sent");
  }
  status_line.Finish();
  server.Stop();
  return strsignal(signal_number);
}

// A stopped server's counters, for --json.
inline nlohmann::json ServerSummary(Server& server) {
  const ServerStats s = server.stats();
  return {{"endpoint", server.endpoint()},
          {"clients_served", s.clients_served},
          {"clients_failed", s.clients_failed},
          {"refused", s.refused},
          {"busy", s.busy},
          {"redirected", s.redirected},
          {"unauthenticated", s.unauthenticated},
          {"bytes_sent", s.bytes_sent}};
}

// The hooks by which tests and the benchmark act at a known point of a load, behind hidden
// --testing-* flags declared here once for every program that takes them. Nothing a user needs.
struct TestHooks {
  double hold_at_percent = -1;          // --testing-hold-at: hold the load once this share...
  std::string hold_file;                // --testing-hold-file: ...is verified, until this exists
  std::string start_file;               // --testing-start-file: start loading once this exists
  bool corrupt_served_weights = false;  // --testing-corrupt-served-weights (the engine's)

  // The hooks of a load: hold it at a share verified (a test kills a source meanwhile), and start
  // it on a signal (the benchmark starts K instances at once, as K hosts would).
  void AddLoadHooks(CLI::App& app) {
    app.add_option("--testing-hold-at", hold_at_percent)->group("");
    app.add_option("--testing-hold-file", hold_file)->group("");
    app.add_option("--testing-start-file", start_file)->group("");
  }
  // Fault tests of an engine: flip one bit of the weights once they are served.
  void AddCorruptHook(CLI::App& app) {
    app.add_flag("--testing-corrupt-served-weights", corrupt_served_weights)->group("");
  }

  // In a load's progress callback: once `done` reaches the share, says so on stderr and waits
  // (60 s at most) until the hold file exists. Only once per load.
  void HoldIfDue(const char* who, uint64_t done, uint64_t total) {
    if (hold_file.empty() || held_ || 100.0 * done < hold_at_percent * total) return;
    held_ = true;
    std::fprintf(stderr, "%s: holding the load at %llu of %llu bytes until %s exists\n", who,
                 static_cast<unsigned long long>(done), static_cast<unsigned long long>(total),
                 hold_file.c_str());
    WaitForFile(hold_file, std::chrono::seconds(60));
  }
  // Before the load: says it is ready and waits (600 s at most) until the start file exists.
  void WaitForStart(const char* who) const {
    if (start_file.empty()) return;
    std::fprintf(stderr, "%s: ready; waiting for %s\n", who, start_file.c_str());
    WaitForFile(start_file, std::chrono::seconds(600));
  }

 private:
  static void WaitForFile(const std::string& path, std::chrono::seconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (access(path.c_str(), F_OK) != 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  bool held_ = false;
};

// The fan-out flag both CLIs take (ServerOptions::fanout).
inline void AddFanoutFlag(CLI::App& app, int& fanout) {
  app.add_option("--fanout", fanout,
                 "Clients streamed at once before newcomers are redirected to relays loading "
                 "from here (instances started with netloader-client --serve), so that a burst "
                 "forms a tree: 1 makes a chain, in which every instance receives at the full "
                 "link rate; 0 never redirects")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
}

// ServerOptions::advertise, for netloader-server and netloader-client --serve.
inline void AddAdvertiseFlag(CLI::App& app, std::string& advertise) {
  app.add_option("--advertise", advertise,
                 "The host name or address other instances reach this server at, when it "
                 "listens on every interface (tcp://0.0.0.0:PORT, as in a container) or behind "
                 "NAT: the registry lists tcp://HOST:PORT and relays tell their sources that")
      ->type_name("HOST");
}

// A server's (or relay's) registry lease, ServerOptions::registry_ttl.
inline void AddRegistryTtlFlag(CLI::App& app, std::chrono::seconds& ttl) {
  app.add_option_function<int>(
         "--registry-ttl", [&ttl](int seconds) { ttl = std::chrono::seconds(seconds); },
         "With --registry: seconds after which a server that died or froze drops out of it "
         "(its lease; renewed every third of it). Default " +
             std::to_string(ServerOptions().registry_ttl.count()))
      ->check(CLI::Range(2, 3600));
}

}  // namespace netloader::cli
