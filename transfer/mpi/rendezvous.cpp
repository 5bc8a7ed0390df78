#include "transfer/mpi/rendezvous.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>
#include <vector>

extern char** environ;

namespace netloader::transfer {
namespace {

using Clock = std::chrono::steady_clock;

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

Status ProbeRendezvous(const std::string& uri, std::chrono::milliseconds timeout) {
  const size_t at = uri.find("tcp://");
  if (at == std::string::npos) return Status::Ok();  // another transport: nothing to probe
  std::string address = uri.substr(at + 6);
  address = address.substr(0, address.find(';'));
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return Status::Ok();
  const std::string host = address.substr(0, std::min(address.find(','), colon));
  const std::string port = address.substr(colon + 1);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || !found) return Status::Ok();
  std::string error;
  const int fd = socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    int rc = connect(fd, found->ai_addr, found->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = poll(&p, 1, static_cast<int>(timeout.count()));
      int so_error = 0;
      socklen_t length = sizeof so_error;
      if (rc == 1) getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &length);
      error = rc == 0 ? "no answer within " + std::to_string(timeout.count()) + " ms"
                      : (so_error ? std::strerror(so_error) : "");
    } else if (rc != 0) {
      error = std::strerror(errno);
    }
    close(fd);
  }
  freeaddrinfo(found);
  if (error.empty()) return Status::Ok();
  return Status(StatusCode::kUnavailable,
                "the MPI rendezvous at " + host + ":" + port + " does not answer (" + error + ")");
}

Result<std::string> ResolveRendezvous(const std::string& spec) {
  if (spec.rfind("file:", 0) != 0) return spec;
  const std::string path = spec.substr(5);
  std::string uri = Trim(ReadWholeFile(path));
  if (uri.empty()) {
    return Status(StatusCode::kNotFound, "rendezvous file '" + path + "' is missing or empty");
  }
  return uri;
}

// The child is forked from a dedicated thread that lives as long as the child: PR_SET_PDEATHSIG
// fires when the forking *thread* exits, so forking from a caller's short-lived thread would kill
// it early.
Result<PrivateRendezvous> StartPrivateRendezvous(const TransportOptions& options) {
  auto exited = std::make_shared<std::atomic<bool>>(false);
  char dir_template[] = "/tmp/netloader-rendezvous-XXXXXX";
  if (!mkdtemp(dir_template)) {
    return Status(StatusCode::kUnavailable, "cannot create a temporary directory for ompi-server");
  }
  const std::string dir = dir_template;
  const std::string uri_file = dir + "/uri";
  const std::string log_file = dir + "/ompi-server.log";

  // Everything the child needs is prepared before fork: after fork only async-signal-safe calls.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    if (std::string(*e).rfind("OMPI_MCA_oob_tcp_if_include=", 0) != 0) env_strings.push_back(*e);
  }
  env_strings.push_back("OMPI_MCA_oob_tcp_if_include=" + options.interface);
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> arg_strings = {options.ompi_server, "--no-daemonize", "-r", uri_file};
  std::vector<char*> argv;
  for (std::string& s : arg_strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  std::promise<pid_t> spawned;
  std::future<pid_t> spawned_pid = spawned.get_future();
  const pid_t parent = getpid();
  std::thread([&, exited]() {
    pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // ompi-server ignores SIGTERM
      if (getppid() != parent) _exit(1);
      int fd = open(log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      int devnull = open("/dev/null", O_RDONLY);
      if (devnull >= 0) dup2(devnull, 0);
      execvpe(argv[0], argv.data(), envp.data());
      _exit(127);
    }
    spawned.set_value(pid);
    if (pid < 0) return;
    int wstatus = 0;
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    exited->store(true);
  }).detach();
  const pid_t pid = spawned_pid.get();
  if (pid < 0) return Status(StatusCode::kUnavailable, "fork for ompi-server failed");

  const auto deadline = Clock::now() + options.startup_timeout;
  std::string uri;
  while (Clock::now() < deadline) {
    uri = Trim(ReadWholeFile(uri_file));
    if (!uri.empty()) break;
    if (exited->load()) {
      return Status(StatusCode::kUnavailable,
                    "ompi-server ('" + options.ompi_server +
                        "') exited at start-up: " + Trim(ReadWholeFile(log_file)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (uri.empty()) {
    kill(pid, SIGKILL);
    return Status(StatusCode::kTimeout, "ompi-server did not write its URI within " +
                                            std::to_string(options.startup_timeout.count()) +
                                            " ms");
  }
  // The child keeps its log open; the names are no longer needed.
  unlink(uri_file.c_str());
  unlink(log_file.c_str());
  rmdir(dir.c_str());
  return PrivateRendezvous{uri, pid, exited};
}

}  // namespace netloader::transfer
