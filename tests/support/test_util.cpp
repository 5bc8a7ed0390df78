#include "tests/support/test_util.h"

#include <arpa/inet.h>
#include <execinfo.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace netloader::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/netloader-test-XXXXXX";
  if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

namespace {
// Every test process gets a shared secret of its own, which the servers, clients and engines it
// starts find through NETLOADER_SECRET_FILE (the default the CLIs and examples read): tests run
// with authentication on, as deployed, and never touch the user's ~/.config/netloader/secret.
// A process that inherited the variable (a child of a test) keeps it.
struct SecretPerProcess {
  SecretPerProcess() { setenv("NETLOADER_SECRET_FILE", (dir / "secret").c_str(), 0); }
  TempDir dir;
} const secret_per_process;

const char* crash_who = "";
std::atomic<const char*> crash_phase{""};

void WriteAll(const char* text) {
  for (size_t n = std::strlen(text); n > 0;) {
    const ssize_t written = write(STDERR_FILENO, text, n);
    if (written <= 0) return;
    text += written;
    n -= static_cast<size_t>(written);
  }
}

// Only async-signal-safe calls: write, and glibc's backtrace and backtrace_symbols_fd, which do
// not allocate once backtrace has run outside the handler (its first call loads libgcc).
void OnFatalSignal(int signal_number) {
  const char* name = signal_number == SIGSEGV   ? "SIGSEGV"
                     : signal_number == SIGBUS  ? "SIGBUS"
                     : signal_number == SIGILL  ? "SIGILL"
                     : signal_number == SIGFPE  ? "SIGFPE"
                     : signal_number == SIGABRT ? "SIGABRT"
                                                : "signal";
  char number[16];
  int at = sizeof number - 1;
  number[at] = '\0';
  for (int n = signal_number; n > 0 && at > 0; n /= 10)
    number[--at] = static_cast<char>('0' + n % 10);
  WriteAll("\n");
  WriteAll(crash_who);
  WriteAll(": fatal signal ");
  WriteAll(number + at);
  WriteAll(" (");
  WriteAll(name);
  WriteAll(") ");
  WriteAll(crash_phase.load());
  WriteAll("; stack:\n");
  void* frames[64];
  backtrace_symbols_fd(frames, backtrace(frames, 64), STDERR_FILENO);
  signal(signal_number, SIG_DFL);  // SA_RESETHAND did this already; the same status follows
  raise(signal_number);
}
}  // namespace

void InstallCrashReporter(const char* who) {
  crash_who = who;
  void* warm[1];
  backtrace(warm, 1);                     // loads what backtrace needs now, not inside the handler
  static char alternate_stack[64 << 10];  // a stack overflow still gets its report
  stack_t stack{};
  stack.ss_sp = alternate_stack;
  stack.ss_size = sizeof alternate_stack;
  sigaltstack(&stack, nullptr);
  struct sigaction action {};
  action.sa_handler = OnFatalSignal;
  action.sa_flags = SA_ONSTACK | SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  for (int s : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) sigaction(s, &action, nullptr);
}

void CrashPhase(const char* phase) { crash_phase.store(phase); }

std::string ResolveCrashTrace(const std::string& text, const std::string& binary) {
  // Frames look like "/path/to/binary(+0x13837f)[0x55980791e37f]".
  const std::string marker = binary + "(+0x";
  std::vector<std::string> lines, offsets;
  std::vector<bool> is_frame;  // per line: whether its offset is in `offsets`
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const size_t begin = marker.size() - 2, end = line.find(')', begin);
    is_frame.push_back(line.rfind(marker, 0) == 0 && end != std::string::npos);
    if (is_frame.back()) offsets.push_back(line.substr(begin, end - begin));
    lines.push_back(line);
  }
  if (offsets.empty() || binary.find('\'') != std::string::npos) return text;
  std::string command = "addr2line -f -C -e '" + binary + "'";
  for (const std::string& offset : offsets) {
    // A frame is a return address: the call is the byte before it.
    char hex[32];
    std::snprintf(hex, sizeof hex, " 0x%llx", std::strtoull(offset.c_str(), nullptr, 16) - 1);
    command += hex;
  }
  FILE* pipe = popen((command + " 2>/dev/null").c_str(), "r");
  if (pipe == nullptr) return text;
  std::vector<std::string> names;  // function, file:line, for each offset in turn
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe) != nullptr) {
    std::string name = buffer;
    if (!name.empty() && name.back() == '\n') name.pop_back();
    names.push_back(name);
  }
  if (pclose(pipe) != 0 || names.size() != 2 * offsets.size()) return text;
  std::string out;
  for (size_t i = 0, next = 0; i < lines.size(); ++i) {
    out += lines[i] + "\n";
    if (is_frame[i]) {
      out += "    " + names[2 * next] + " at " + names[2 * next + 1] + "\n";
      ++next;
    }
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

Child::Child(const std::vector<std::string>& argv, const std::string& log_prefix)
    : stdout_path_(log_prefix + ".stdout"), stderr_path_(log_prefix + ".stderr") {
  std::vector<char*> args;
  std::vector<std::string> copy = argv;
  for (std::string& a : copy) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t parent = getpid();
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    setpgid(0, 0);
    int out = open(stdout_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    execv(args[0], args.data());
    _exit(127);
  }
}

Child::~Child() {
  if (Running()) {
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
  }
}

bool Child::Running() {
  if (pid_ <= 0 || status_ != -1) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    status_ = status;
    return false;
  }
  return true;
}

void Child::Signal(int signal) {
  if (Running()) kill(pid_, signal);
}

int Child::Wait(std::chrono::milliseconds timeout) {
  if (!WaitFor([this] { return !Running(); }, timeout)) {
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
    return -1;
  }
  if (WIFEXITED(status_)) return WEXITSTATUS(status_);
  if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
  return -1;
}

bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

std::string WaitForLine(const std::string& path, std::chrono::milliseconds timeout) {
  std::string line;
  WaitFor(
      [&] {
        const std::string text = ReadFile(path);
        const size_t newline = text.find('\n');
        if (newline == std::string::npos || newline == 0) return false;
        line = text.substr(0, newline);
        return true;
      },
      timeout);
  return line;
}

Rendezvous::Rendezvous(const TempDir& dir, const std::string& interface)
    : path_(dir / "rendezvous.uri"),
      child_({"/usr/bin/env", "OMPI_MCA_oob_tcp_if_include=" + interface, "ompi-server",
              "--no-daemonize", "-r", path_},
             dir / "ompi-server"),
      ready_(!WaitForLine(path_, std::chrono::seconds(20)).empty()) {}

namespace {

// A port on 127.0.0.1 that was free a moment ago.
int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  int port = 0;
  if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
    port = ntohs(address.sin_port);
  }
  if (fd >= 0) close(fd);
  return port;
}

}  // namespace

std::string HttpGet(const std::string& url, std::chrono::milliseconds timeout) {
  const std::string scheme = "http://";
  if (url.compare(0, scheme.size(), scheme) != 0) return "";
  const std::string rest = url.substr(scheme.size());
  const size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  const std::string path = slash == std::string::npos ? "/" : rest.substr(slash);
  const size_t colon = authority.rfind(':');
  if (colon == std::string::npos) return "";
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(std::stoi(authority.substr(colon + 1))));
  if (inet_pton(AF_INET, authority.substr(0, colon).c_str(), &address.sin_addr) != 1) return "";
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  timeval tv{static_cast<time_t>(timeout.count() / 1000),
             static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  std::string answer;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request =
        "GET " + path + " HTTP/1.1\r\nHost: " + authority + "\r\nConnection: close\r\n\r\n";
    if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buffer[16384];
      ssize_t n;
      while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) answer.append(buffer, n);
    }
  }
  close(fd);
  const size_t body = answer.find("\r\n\r\n");
  if (answer.compare(0, 12, "HTTP/1.1 200") != 0 || body == std::string::npos) return "";
  std::string text = answer.substr(body + 4);
  if (answer.substr(0, body).find("chunked") == std::string::npos) return text;
  std::string plain;  // Transfer-Encoding: chunked
  for (size_t at = 0;;) {
    const size_t eol = text.find("\r\n", at);
    if (eol == std::string::npos) return "";
    const size_t size = std::stoul(text.substr(at, eol - at), nullptr, 16);
    if (size == 0) return plain;
    plain += text.substr(eol + 2, size);
    at = eol + 2 + size + 2;
  }
}

EtcdServer::EtcdServer(const TempDir& dir, std::string address)
    : dir_(dir.path()), address_(std::move(address)) {}

EtcdServer::~EtcdServer() { Kill(); }

bool EtcdServer::Start(bool fresh) {
  Kill();
  // A port taken between its probe and etcd's bind makes etcd exit: on a first start, try new
  // ones, a few times; a restart keeps its ports (clients know its URL).
  const bool restart = client_port_ != 0;
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (!restart && (client_port_ == 0 || attempt > 0)) {
      client_port_ = FreeLoopbackPort();
      peer_port_ = FreeLoopbackPort();
    }
    const std::string data = dir_ + "/etcd-data";
    if (fresh) std::filesystem::remove_all(data);
    const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
    ++starts_;
    child_ = std::make_unique<Child>(
        std::vector<std::string>{"/usr/bin/env", "etcd", "--name", "registry", "--data-dir", data,
                                 "--listen-client-urls", url(), "--advertise-client-urls", url(),
                                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                                 "--initial-cluster", "registry=" + peer},
        dir_ + "/etcd-" + std::to_string(starts_));
    const bool ready = WaitFor(
        [&] {
          return !child_->Running() ||
                 child_->Stderr().find("ready to serve client requests") != std::string::npos;
        },
        std::chrono::seconds(20));
    if (ready && child_->Running()) return true;
    Kill();
  }
  return false;
}

void EtcdServer::Kill() {
  if (!child_) return;
  child_->Signal(SIGKILL);
  child_->Wait(std::chrono::seconds(30));
}

std::string EtcdServer::Log() const { return child_ ? child_->Stderr() : ""; }

Hosts::Hosts(const std::vector<std::string>& rates) : name_("nlt" + std::to_string(getpid())) {
  Script({"sweep"});
  std::vector<std::string> up = {"up", name_};
  up.insert(up.end(), rates.begin(), rates.end());
  why_ = Script(up);
  ok_ = why_.empty();
}

Hosts::~Hosts() { Script({"down", name_}); }

// Runs the script to its end (at most 60 s); "" on success, else what it printed.
std::string Hosts::Script(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {std::string(NETLOADER_SOURCE_DIR) + "/scripts/netns-hosts.sh"};
  argv.insert(argv.end(), args.begin(), args.end());
  TempDir logs;
  Child script(argv, logs / "netns");
  const int code = script.Wait(std::chrono::seconds(60));
  if (code == 0) return "";
  const std::string out = script.Stderr() + script.Stdout();
  return out.empty() ? "netns-hosts.sh exited " + std::to_string(code) : out;
}

std::string Hosts::address(int host) const {
  TempDir logs;
  Child script({std::string(NETLOADER_SOURCE_DIR) + "/scripts/netns-hosts.sh", "addr", name_,
                std::to_string(host)},
               logs / "addr");
  script.Wait(std::chrono::seconds(10));
  std::string out = script.Stdout();
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string Hosts::bridge_address() const { return address(-1); }

std::vector<std::string> Hosts::On(int host, std::vector<std::string> argv) const {
  std::vector<std::string> on = {std::string(NETLOADER_SOURCE_DIR) + "/scripts/netns-hosts.sh",
                                 "exec", name_, std::to_string(host)};
  on.insert(on.end(), argv.begin(), argv.end());
  return on;
}

MuteListener::MuteListener() : fd_(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      listen(fd_, 64) != 0 || getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length)) {
    throw std::runtime_error("cannot open a listening socket on 127.0.0.1");
  }
  endpoint_ = "tcp://127.0.0.1:" + std::to_string(ntohs(address.sin_port));
}

MuteListener::~MuteListener() { close(fd_); }

std::vector<nlohmann::json> JsonLines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    nlohmann::json parsed = nlohmann::json::parse(line, nullptr, false);
    if (parsed.is_object()) out.push_back(parsed);
  }
  return out;
}

std::vector<pid_t> ChildrenNamed(pid_t pid, const std::string& comm) {
  std::vector<pid_t> found;
  std::error_code error;  // a process that has exited has no tasks left: none found
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& task : std::filesystem::directory_iterator(tasks, error)) {
    std::istringstream children(ReadFile(task.path() / "children"));
    for (pid_t child; children >> child;) {
      if (ReadFile("/proc/" + std::to_string(child) + "/comm") == comm + "\n") {
        found.push_back(child);
      }
    }
  }
  return found;
}

std::string BinDir() { return NETLOADER_BIN_DIR; }

}  // namespace netloader::testing
