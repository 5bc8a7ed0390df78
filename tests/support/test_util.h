#pragma once

// Helpers for netloader's tests: temporary directories, file comparison, child processes with
// deadlines.

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace netloader::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& bytes);

// A child process started from argv, its stdout and stderr captured in files. It receives
// SIGKILL if the test process dies, and on destruction if still running.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& log_prefix);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // Exit code once it exited by itself before `timeout`; -1 if it had to be killed (the test
  // then fails loudly), 128+signal if a signal ended it.
  int Wait(std::chrono::milliseconds timeout);
  void Signal(int signal);
  bool Running();
  pid_t pid() const { return pid_; }
  std::string Stdout() const { return ReadFile(stdout_path_); }
  std::string Stderr() const { return ReadFile(stderr_path_); }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  std::string stdout_path_;
  std::string stderr_path_;
};

// Makes a crash of this process say where it happened: on SIGSEGV, SIGBUS, SIGILL, SIGFPE or
// SIGABRT it writes "`who`: fatal signal N (NAME) <phase>" and a stack trace to stderr, then
// dies of the same signal, so the exit status is unchanged. For the processes tests and
// benchmarks start as peers: a crash there otherwise shows only as "exit 139" with empty output
// (Open MPI's and UCX's handlers are gone once MPI is finalized). The trace gives this binary's
// frames as offsets (its library's functions are not exported); ResolveCrashTrace names them.
void InstallCrashReporter(const char* who);
// `text` (a crashed child's stderr) with each "`binary`(+0x...)" frame followed by the function
// and source line addr2line finds for it in `binary` (built with -g); `text` unchanged when there
// is none or addr2line is missing.
std::string ResolveCrashTrace(const std::string& text, const std::string& binary);
// What the process is doing, printed with a crash: a string literal (it is not copied).
void CrashPhase(const char* phase);

// Waits until `condition` holds, looking every few milliseconds, for at most `timeout`; true when
// it held. Tests wait for what another thread or process does only through this, with a deadline
// far beyond the expected time (sanitizers and a loaded machine slow everything down), never
// with a fixed sleep.
bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout);

// Polls `path` until it holds a non-empty first line, or the timeout passes ("" then).
std::string WaitForLine(const std::string& path, std::chrono::milliseconds timeout);

// A shared MPI rendezvous as a deployment runs one: ompi-server, writing its URI to
// `dir`/rendezvous.uri. Killed with its process group on destruction.
class Rendezvous {
 public:
  // On `interface` (loopback by default; a Hosts bridge for simulated hosts).
  explicit Rendezvous(const TempDir& dir, const std::string& interface = "lo");
  bool ready() const { return ready_; }  // the URI file appeared within 20 s
  std::string spec() const { return "file:" + path_; }
  Child& child() { return child_; }

 private:
  std::string path_;
  Child child_;
  bool ready_;
};

// An etcd member as a fleet's registry runs one (Debian's etcd-server): a cluster of one on two
// free loopback ports, its data in `dir`. Killed on destruction.
class EtcdServer {
 public:
  // Serves clients on `address` (an IPv4 address of this namespace; the netns hosts reach the
  // bridge's).
  explicit EtcdServer(const TempDir& dir, std::string address = "127.0.0.1");
  ~EtcdServer();
  EtcdServer(const EtcdServer&) = delete;
  EtcdServer& operator=(const EtcdServer&) = delete;
  // Starts it (again, on the same ports; `fresh`: with empty data, as a replaced member);
  // true once it serves client requests, within 20 s.
  bool Start(bool fresh = false);
  void Kill();  // SIGKILL, and waits for it
  std::string url() const { return "http://" + address_ + ":" + std::to_string(client_port_); }
  std::string Log() const;  // its output so far

 private:
  std::string dir_;
  std::string address_;
  int client_port_ = 0;
  int peer_port_ = 0;
  int starts_ = 0;
  std::unique_ptr<Child> child_;
};

// The body of an HTTP GET of `url` ("http://HOST:PORT/PATH", HOST an IPv4 address) answered
// 200 within `timeout`; "" otherwise.
std::string HttpGet(const std::string& url, std::chrono::milliseconds timeout);

// Simulated hosts (scripts/netns-hosts.sh): network namespaces on a bridge, host i with a NIC
// ("nlv") capped at rates[i] in both directions. Removed on destruction; sets left behind by a
// test process that was killed are removed by the next one (and by the netns tests' cleanup).
class Hosts {
 public:
  explicit Hosts(const std::vector<std::string>& rates);
  ~Hosts();
  Hosts(const Hosts&) = delete;
  Hosts& operator=(const Hosts&) = delete;
  // False where namespaces cannot be made here (no root, no CAP_NET_ADMIN); why() says why.
  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }
  std::string address(int host) const;  // e.g. "10.150.33.1"
  std::string bridge_address() const;   // the root namespace's end, where a rendezvous runs
  std::string bridge() const { return "nlbr-" + name_; }
  // `argv` run on host `host`.
  std::vector<std::string> On(int host, std::vector<std::string> argv) const;

 private:
  std::string Script(const std::vector<std::string>& args) const;
  std::string name_;
  bool ok_ = false;
  std::string why_;
};

// A TCP port on 127.0.0.1 that accepts connections (the kernel completes the handshake) and
// never says anything: a source that is reachable but does not answer. Bound for its lifetime,
// so no other test's server can take the port meanwhile.
class MuteListener {
 public:
  MuteListener();
  ~MuteListener();
  MuteListener(const MuteListener&) = delete;
  MuteListener& operator=(const MuteListener&) = delete;
  const std::string& endpoint() const { return endpoint_; }  // "tcp://127.0.0.1:PORT"

 private:
  int fd_ = -1;
  std::string endpoint_;
};

// Every line of `text` that parses as a JSON object, in order (MPI may print its own lines).
std::vector<nlohmann::json> JsonLines(const std::string& text);

// The children of process `pid` whose command is `comm` (as /proc shows it: at most 15
// characters), such as its MPI helpers ("netloader-mpi-h").
std::vector<pid_t> ChildrenNamed(pid_t pid, const std::string& comm);

// Directory of the build's executables (set by CMake).
std::string BinDir();

}  // namespace netloader::testing
