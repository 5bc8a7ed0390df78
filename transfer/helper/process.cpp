#include "transfer/helper/process.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <thread>

extern char** environ;

namespace netloader::transfer::helper {
namespace {

// The descriptor number of the main socket in the helper.
constexpr int kHelperFd = 3;

bool Executable(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

std::string Describe(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  }
  return "ended";
}

// Reaps `pid` within `grace`, then kills and reaps it.
void ReapInBackground(pid_t pid, std::chrono::milliseconds grace) {
  std::thread([pid, grace] {
    const auto give_up = Clock::now() + grace;
    int status;
    while (Clock::now() < give_up) {
      if (waitpid(pid, &status, WNOHANG) != 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }).detach();
}

}  // namespace

std::string HelperExecutable() {
  static const std::string found = [] {
    if (const char* env = std::getenv("NETLOADER_MPI_HELPER"); env != nullptr && *env) {
      return std::string(env);
    }
    const std::string name = "netloader-mpi-helper";
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&HelperExecutable), &info) != 0 && info.dli_fname) {
      char resolved[PATH_MAX];
      if (realpath(info.dli_fname, resolved) != nullptr) {
        std::string dir(resolved);
        dir = dir.substr(0, dir.rfind('/'));
        for (const std::string& candidate :
             {dir + "/" + name, dir + "/bin/" + name, dir + "/../libexec/" + name,
              dir + "/../bin/" + name, dir + "/../../bin/" + name}) {
          if (Executable(candidate)) return candidate;
        }
      }
    }
    return name;  // looked up on PATH by posix_spawnp
  }();
  return found;
}

Result<std::shared_ptr<Process>> Process::Start(const TransportOptions& options,
                                                const std::string& rendezvous_spec) {
  Result<std::pair<Link, Link>> pair = LinkPair();
  if (!pair.ok()) return pair.status();
  Link& mine = pair->first;
  Link& theirs = pair->second;
  const std::string executable = HelperExecutable();
  std::vector<std::string> args = {
      executable,
      "--fd",
      std::to_string(kHelperFd),
      "--rendezvous",
      rendezvous_spec,
      "--interface",
      options.interface,
      "--ompi-server",
      options.ompi_server,
      "--startup-timeout-ms",
      std::to_string(options.startup_timeout.count()),
  };
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // dup2 onto kHelperFd clears close-on-exec there; a socket that already is kHelperFd is
  // first moved elsewhere so that dup2 is not a no-op.
  int child_fd = theirs.fd();
  Link moved;
  if (child_fd == kHelperFd) {
    moved = Link(fcntl(child_fd, F_DUPFD_CLOEXEC, 10));
    child_fd = moved.fd();
  }
  posix_spawn_file_actions_adddup2(&actions, child_fd, kHelperFd);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, executable.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return Status(StatusCode::kUnavailable, "cannot start the MPI helper '" + executable +
                                                "': " + std::strerror(rc) +
                                                " (set NETLOADER_MPI_HELPER to its path)");
  }
  theirs = Link();
  moved = Link();
  std::shared_ptr<Process> process(new Process());
  process->pid_ = pid;
  process->main_ = std::move(mine);
  process->spec_ = rendezvous_spec;
  // The helper answers once MPI is up; it applies options.startup_timeout itself.
  Result<Message> ready =
      process->main_.Receive(Clock::now() + options.startup_timeout + kAnswerTimeout);
  if (!ready.ok() || ready->op() != Op::kReady) {
    Status why = !ready.ok() ? ready.status()
                 : ready->op() == Op::kFailed
                     ? ready->GetStatus()
                     : Status(StatusCode::kUnavailable, "unexpected answer");
    if (!ready.ok()) {
      std::lock_guard<std::mutex> lock(process->mu_);
      process->ReapLocked(false);
      if (process->exited_)
        why = Status(StatusCode::kUnavailable, "the MPI helper " + process->ended_);
    }
    process->Kill();
    return Status(why.code(),
                  "starting the MPI helper (rendezvous '" +
                      (rendezvous_spec.empty() ? std::string("private") : rendezvous_spec) +
                      "'): " + why.message());
  }
  process->rendezvous_ = ready->Str();
  return process;
}

Process::~Process() {
  std::lock_guard<std::mutex> lock(mu_);
  main_ = Link();  // the helper sees end of file and exits
  if (!exited_) ReapInBackground(pid_, std::chrono::seconds(8));
}

void Process::ReapLocked(bool block) {
  if (exited_ || pid_ < 0) return;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, block ? 0 : WNOHANG);
  if (r == pid_) {
    exited_ = true;
    ended_ = Describe(status);
  }
}

Status Process::Alive() {
  std::lock_guard<std::mutex> lock(mu_);
  ReapLocked(false);
  if (!exited_) return Status::Ok();
  return Status(StatusCode::kUnavailable,
                "the MPI helper (pid " + std::to_string(pid_) + ") " + ended_);
}

void Process::Kill() {
  std::lock_guard<std::mutex> lock(mu_);
  if (exited_ || pid_ < 0) return;
  kill(pid_, SIGKILL);
  ReapLocked(true);
}

Status Process::Request(const Message& request, int pass_fd) {
  Status sent = main_.Send(request, pass_fd);
  Result<Message> reply =
      sent.ok() ? main_.Receive(Clock::now() + kAnswerTimeout) : Result<Message>(sent);
  if (!reply.ok()) {
    if (reply.status().code() == StatusCode::kTimeout) {
      kill(pid_, SIGKILL);  // wedged: a new one takes over
      ReapLocked(true);
      return Status(StatusCode::kUnavailable,
                    "the MPI helper (pid " + std::to_string(pid_) + ") did not answer within " +
                        std::to_string(kAnswerTimeout.count()) + " s and was killed");
    }
    ReapLocked(false);
    if (exited_) {
      return Status(StatusCode::kUnavailable,
                    "the MPI helper (pid " + std::to_string(pid_) + ") " + ended_);
    }
    return reply.status();
  }
  return reply->GetStatus();
}

Status Process::Health() {
  std::lock_guard<std::mutex> lock(mu_);
  ReapLocked(false);
  if (exited_) {
    return Status(StatusCode::kUnavailable,
                  "the MPI helper (pid " + std::to_string(pid_) + ") " + ended_);
  }
  return Request(Message(Op::kHealth), -1);
}

Result<Link> Process::Open() {
  Result<std::pair<Link, Link>> pair = LinkPair();
  if (!pair.ok()) return pair.status();
  std::lock_guard<std::mutex> lock(mu_);
  Status sent = main_.Send(Message(Op::kOpen), pair->second.fd());
  if (!sent.ok()) {
    if (sent.code() == StatusCode::kTimeout) kill(pid_, SIGKILL);  // wedged
    ReapLocked(sent.code() == StatusCode::kTimeout);
    if (exited_) {
      return Status(StatusCode::kUnavailable,
                    "the MPI helper (pid " + std::to_string(pid_) + ") " + ended_);
    }
    return sent;
  }
  return std::move(pair->first);
}

}  // namespace netloader::transfer::helper
