#include "transfer/mpi_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <mpi.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "transfer/call_with_deadline.h"

extern char** environ;

namespace netloader::transfer {
namespace {

constexpr int kDataTag = 7;
// MPI_Comm_disconnect is collective; a peer that vanished makes it wait forever.
constexpr std::chrono::seconds kDisconnectTimeout{5};
constexpr std::chrono::seconds kOpenPortTimeout{10};

std::string MpiErrorString(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
  return std::string(text, len);
}

Status MpiFailure(const std::string& what, int rc) {
  return Status(StatusCode::kTransferFailed, what + " failed: " + MpiErrorString(rc));
}

// Process-wide MPI state. Initialised once; never torn down before exit.
struct Runtime {
  std::mutex mu;             // guards every field below
  bool initialised = false;  // MPI is usable by netloader
  Status broken;             // set when MPI start-up failed: MPI is unusable for good
  std::string rendezvous;    // resolved URI shared by all peers of this process
  pid_t private_server = -1;
  std::shared_ptr<std::atomic<bool>> private_server_exited;
  std::atomic<int> abandoned{0};   // MPI calls left running past their deadline
  std::atomic<int> open_ports{0};  // MPI_Open_port minus MPI_Close_port
  std::atomic<bool> ports_stuck{false};
  std::mutex probe_mu;  // guards the two fields below
  Clock::time_point probed{};
  Status rendezvous_health;
};

Runtime& GetRuntime() {
  static Runtime* runtime = new Runtime();  // outlives detached threads at exit
  return *runtime;
}

// Whether anything accepts TCP connections at the first tcp://HOST:PORT of an ompi-server URI
// ("JOBID.VPID;tcp://HOST[,HOST...]:PORT..."), within `timeout`.
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

void FinalizeAtExit() {
  // MPI_Finalize while another thread is still inside MPI_Comm_connect/accept aborts the process
  // (seen: a double free in ompi_comm_finalize). Such calls were abandoned past their deadline;
  // then skip finalisation: the process is exiting and the OS reclaims everything.
  if (GetRuntime().abandoned.load() > 0) return;
  // A dead rendezvous can make MPI_Finalize wait forever; bound it.
  auto finalize = CallWithDeadline<int>("MPI_Finalize", Clock::now() + std::chrono::seconds(5),
                                        []() -> Result<int> { return MPI_Finalize(); });
  (void)finalize;
}

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

// Starts `ompi-server` as a child that dies with this process and returns its URI. The child is
// forked from a dedicated thread that lives as long as the child: PR_SET_PDEATHSIG fires when the
// forking *thread* exits, so forking from a caller's short-lived thread would kill it early.
Result<std::string> StartPrivateRendezvous(const TransportOptions& options,
                                           std::shared_ptr<std::atomic<bool>> exited,
                                           pid_t* pid_out) {
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
  *pid_out = pid;

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
  return uri;
}

void SetMpiEnvironment(const TransportOptions& options, const std::string& rendezvous) {
  // The rendezvous is what the caller configured: it must win.
  setenv("OMPI_MCA_pmix_server_uri", rendezvous.c_str(), 1);
  SetMpiTuningEnvironment(options);
  setenv("OMPI_MCA_plm", "isolated", 0);
}

// Initialises MPI once for the process (see MakeMpiTransport).
Status EnsureMpi(const TransportOptions& options, const std::string& wanted_spec) {
  Runtime& rt = GetRuntime();
  std::lock_guard<std::mutex> lock(rt.mu);
  std::string wanted;
  if (!wanted_spec.empty()) {
    Result<std::string> resolved = ResolveRendezvous(wanted_spec);
    if (!resolved.ok()) return resolved.status();
    wanted = *resolved;
  }
  if (!rt.broken.ok()) return rt.broken;
  if (rt.initialised) {
    if (!wanted.empty() && wanted != rt.rendezvous) {
      return Status(StatusCode::kInvalidArgument, "MPI in this process already uses rendezvous '" +
                                                      rt.rendezvous + "'; cannot also use '" +
                                                      wanted + "' (one rendezvous per process)");
    }
    return Status::Ok();
  }
  int already = 0;
  MPI_Initialized(&already);
  if (already) {
    // The host initialised MPI; it must also have set up the rendezvous it names.
    int provided = 0;
    MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_MULTIPLE) {
      return Status(StatusCode::kUnavailable,
                    "the host initialised MPI without MPI_THREAD_MULTIPLE, which netloader's "
                    "background threads need");
    }
    rt.rendezvous = wanted;
  } else {
    if (wanted.empty()) {
      rt.private_server_exited = std::make_shared<std::atomic<bool>>(false);
      Result<std::string> uri =
          StartPrivateRendezvous(options, rt.private_server_exited, &rt.private_server);
      if (!uri.ok()) return uri.status();
      wanted = *uri;
    }
    SetMpiEnvironment(options, wanted);
    // An unreachable rendezvous can make MPI_Init wait forever: bound it like every other call.
    Result<int> provided = CallWithDeadline<int>(
        "MPI_Init_thread", Clock::now() + options.startup_timeout, []() -> Result<int> {
          int level = 0;
          int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &level);
          if (rc != MPI_SUCCESS) return MpiFailure("MPI_Init_thread", rc);
          return level;
        });
    if (!provided.ok()) {
      const bool timed_out = provided.status().code() == StatusCode::kTimeout;
      // A half-initialised MPI cannot be retried or finalised: every later use fails with this.
      if (timed_out) rt.abandoned++;
      rt.broken = Status(
          timed_out ? StatusCode::kTimeout : StatusCode::kUnavailable,
          "MPI start-up with rendezvous '" + wanted + "' failed: " + provided.status().message());
      return rt.broken;
    }
    if (*provided < MPI_THREAD_MULTIPLE) {
      return Status(StatusCode::kUnavailable, "MPI does not provide MPI_THREAD_MULTIPLE");
    }
    rt.rendezvous = wanted;
    std::atexit(FinalizeAtExit);
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  rt.initialised = true;
  return Status::Ok();
}

// One thread per process drives MPI progress for every stream. Each MPI_Test runs UCX's
// progress for all connections under one lock, so several streaming threads each polling their
// own requests only fought over that lock (measured: 23% of a 4-client server in
// pthread_spin_lock). Here streams post their operations and sleep on a condition variable; the
// progress thread tests every outstanding request with MPI_Testsome and wakes their owners.
class ProgressEngine {
 public:
  struct Op {
    MPI_Request request = MPI_REQUEST_NULL;
    bool done = false;
    bool cancel = false;  // the owner gave up: cancel and free it
    int error = MPI_SUCCESS;
    MPI_Count bytes = 0;  // elements (bytes) received
  };
  enum class Wait { kDone, kTimeout, kCancelled };

  static ProgressEngine& Get(MpiTuning tuning) {
    static ProgressEngine* engine = new ProgressEngine(tuning);  // lives until the process exits
    return *engine;
  }

  std::shared_ptr<Op> Add(MPI_Request request) {
    auto op = std::make_shared<Op>();
    op->request = request;
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(op);
    work_.notify_one();
    return op;
  }

  // Waits for `op` until `give_up`, or until `cancel` becomes true (checked every 20 ms).
  Wait WaitFor(const Op& op, Clock::time_point give_up, const std::atomic<bool>* cancel) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!op.done) {
      if (cancel && cancel->load()) return Wait::kCancelled;
      const auto now = Clock::now();
      if (now >= give_up) return Wait::kTimeout;
      done_.wait_until(lock, std::min(give_up, now + std::chrono::milliseconds(20)));
    }
    return Wait::kDone;
  }

  void Cancel(const std::shared_ptr<Op>& op) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!op->done) op->cancel = true;
  }

 private:
  explicit ProgressEngine(MpiTuning tuning) : tuning_(tuning) {
    std::thread([this] { Loop(); }).detach();
  }

  void Loop() {
    std::vector<std::shared_ptr<Op>> ops;
    std::vector<MPI_Request> requests;
    std::vector<int> indices;
    std::vector<MPI_Status> statuses;
    int idle = 0;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_.wait(lock, [&] { return !pending_.empty(); });
        // Abandoned operations: cancel and free them here, the only thread that tests them.
        for (auto it = pending_.begin(); it != pending_.end();) {
          if ((*it)->cancel) {
            MPI_Cancel(&(*it)->request);
            MPI_Request_free(&(*it)->request);
            (*it)->done = true;
            (*it)->error = MPI_ERR_REQUEST;
            it = pending_.erase(it);
          } else {
            ++it;
          }
        }
        ops = pending_;
      }
      if (ops.empty()) continue;
      requests.resize(ops.size());
      for (size_t i = 0; i < ops.size(); ++i) requests[i] = ops[i]->request;
      indices.resize(ops.size());
      statuses.resize(ops.size());
      int count = 0;
      const int rc = MPI_Testsome(static_cast<int>(requests.size()), requests.data(), &count,
                                  indices.data(), statuses.data());
      if (count == MPI_UNDEFINED) count = 0;
      if (count == 0 && rc == MPI_SUCCESS) {
        // Some immediate retries catch completions that are nearly there; then sleep, so the
        // cores go to the transfer itself (and the host's work) rather than to polling.
        if (++idle > 16 && tuning_.poll_interval.count() > 0) {
          std::this_thread::sleep_for(tuning_.poll_interval);
        }
        continue;
      }
      idle = 0;
      std::lock_guard<std::mutex> lock(mu_);
      for (int k = 0; k < count; ++k) {
        Op& op = *ops[indices[k]];
        op.request = MPI_REQUEST_NULL;
        op.error = rc == MPI_ERR_IN_STATUS ? statuses[k].MPI_ERROR : MPI_SUCCESS;
        MPI_Get_elements_x(&statuses[k], MPI_BYTE, &op.bytes);
        op.done = true;
      }
      if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) {
        // A failure not tied to one request: fail them all rather than spin on it.
        for (auto& op : ops) {
          if (!op->done) {
            op->cancel = true;
          }
        }
      }
      pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                    [](const std::shared_ptr<Op>& o) { return o->done; }),
                     pending_.end());
      done_.notify_all();
    }
  }

  const MpiTuning tuning_;
  std::mutex mu_;                 // guards pending_ and every Op's fields
  std::condition_variable work_;  // pending_ became non-empty
  std::condition_variable done_;  // some operation completed
  std::vector<std::shared_ptr<Op>> pending_;
};

class MpiChannel : public Channel {
 public:
  MpiChannel(MPI_Comm comm, MpiTuning tuning) : comm_(comm), tuning_(tuning) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }

  ~MpiChannel() override {
    if (failed_) {
      // The peer may be dead: a collective disconnect could wait forever. Free locally.
      MPI_Comm_free(&comm_);
      return;
    }
    MPI_Comm comm = comm_;
    Result<int> done = CallWithDeadline<int>(
        "MPI_Comm_disconnect", Clock::now() + kDisconnectTimeout,
        [comm]() mutable -> Result<int> { return MPI_Comm_disconnect(&comm); });
    if (!done.ok()) GetRuntime().abandoned++;
  }

  Status Send(const ChunkList& chunks, const StreamOptions& options,
              const ChunkCallback& on_sent) override {
    return Stream(chunks, options, on_sent, /*sending=*/true);
  }
  Status Receive(const ChunkList& chunks, const StreamOptions& options,
                 const ChunkCallback& on_received) override {
    return Stream(chunks, options, on_received, /*sending=*/false);
  }
  void Abandon() override { failed_ = true; }

 private:
  // Posts the nonblocking send or receive of chunk `i`. Multi-span chunks use an hindexed
  // datatype over absolute addresses, so no staging copy is made by netloader.
  int Post(const ChunkList& chunks, size_t i, bool sending, MPI_Request* request) {
    const size_t n = chunks.span_count(i);
    const Span* spans = chunks.spans(i);
    if (n == 1) {
      const int count = static_cast<int>(spans[0].size);
      return sending ? MPI_Isend(spans[0].data, count, MPI_BYTE, 0, kDataTag, comm_, request)
                     : MPI_Irecv(spans[0].data, count, MPI_BYTE, 0, kDataTag, comm_, request);
    }
    std::vector<int> lengths(n);
    std::vector<MPI_Aint> displacements(n);
    for (size_t s = 0; s < n; ++s) {
      lengths[s] = static_cast<int>(spans[s].size);
      MPI_Get_address(spans[s].data, &displacements[s]);
    }
    MPI_Datatype type;
    int rc = MPI_Type_create_hindexed(static_cast<int>(n), lengths.data(), displacements.data(),
                                      MPI_BYTE, &type);
    if (rc != MPI_SUCCESS) return rc;
    MPI_Type_commit(&type);
    rc = sending ? MPI_Isend(MPI_BOTTOM, 1, type, 0, kDataTag, comm_, request)
                 : MPI_Irecv(MPI_BOTTOM, 1, type, 0, kDataTag, comm_, request);
    MPI_Type_free(&type);  // the pending operation keeps its own reference
    return rc;
  }

  Status Stream(const ChunkList& chunks, const StreamOptions& options, const ChunkCallback& on_done,
                bool sending) {
    const char* verb = sending ? "send" : "receive";
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (chunks.bytes(i) > static_cast<uint64_t>(INT_MAX)) {
        return Status(StatusCode::kInvalidArgument, "chunk larger than 2 GiB");
      }
    }
    ProgressEngine& engine = ProgressEngine::Get(tuning_);
    std::deque<std::pair<size_t, std::shared_ptr<ProgressEngine::Op>>> in_flight;  // oldest first
    const size_t window = static_cast<size_t>(std::max(1, options.window));
    size_t next = 0;
    auto last_progress = Clock::now();
    auto fail = [&](Status status) {
      for (auto& entry : in_flight) engine.Cancel(entry.second);
      failed_ = true;
      return status;
    };
    while (next < chunks.size() || !in_flight.empty()) {
      while (next < chunks.size() && in_flight.size() < window) {
        if (options.prepare) options.prepare(next);
        MPI_Request request;
        int rc = Post(chunks, next, sending, &request);
        if (rc != MPI_SUCCESS) {
          return fail(MpiFailure(
              std::string("posting the ") + verb + " of chunk " + std::to_string(next), rc));
        }
        in_flight.emplace_back(next++, engine.Add(request));
      }
      const size_t index = in_flight.front().first;
      // A stall is per stream: this stream's oldest message has not completed for that long.
      const ProgressEngine::Wait waited = engine.WaitFor(
          *in_flight.front().second, last_progress + options.stall_timeout, options.cancel);
      if (waited == ProgressEngine::Wait::kCancelled) {
        return fail(Status(StatusCode::kCancelled,
                           std::string(verb) + " cancelled at chunk " + std::to_string(index)));
      }
      if (waited == ProgressEngine::Wait::kTimeout) {
        return fail(Status(StatusCode::kTimeout,
                           std::string(verb) + " of chunk " + std::to_string(index) +
                               " made no progress for " +
                               std::to_string(options.stall_timeout.count()) + " ms"));
      }
      const ProgressEngine::Op op = *in_flight.front().second;  // complete: no longer shared
      in_flight.pop_front();
      if (op.error != MPI_SUCCESS) {
        return fail(MpiFailure(std::string(verb) + " of chunk " + std::to_string(index), op.error));
      }
      if (!sending && static_cast<uint64_t>(op.bytes) != chunks.bytes(index)) {
        return fail(Status(StatusCode::kTransferFailed,
                           "chunk " + std::to_string(index) + ": expected " +
                               std::to_string(chunks.bytes(index)) + " bytes, received " +
                               std::to_string(op.bytes)));
      }
      last_progress = Clock::now();
      if (on_done) {
        Status status = on_done(index);
        if (!status.ok()) return fail(status);
      }
    }
    return Status::Ok();
  }

  MPI_Comm comm_;
  MpiTuning tuning_;
  bool failed_ = false;  // a stream failed: the peer may be gone
};

class MpiListener : public Listener {
 public:
  MpiListener(std::string port, MpiTuning tuning) : port_(std::move(port)), tuning_(tuning) {}
  ~MpiListener() override {
    // Closing a port while an abandoned accept still waits on it is not safe; leave it then.
    if (accept_abandoned_) return;
    MPI_Close_port(port_.data());
    GetRuntime().open_ports--;
  }
  const std::string& address() const override { return port_; }

  Result<std::unique_ptr<Channel>> Accept(Clock::time_point deadline,
                                          const std::atomic<bool>* cancel) override {
    std::string port = port_;
    Result<MPI_Comm> comm = CallWithDeadline<MPI_Comm>(
        "MPI_Comm_accept", deadline,
        [port]() mutable -> Result<MPI_Comm> {
          MPI_Comm c;
          int rc = MPI_Comm_accept(port.c_str(), MPI_INFO_NULL, 0, MPI_COMM_SELF, &c);
          if (rc != MPI_SUCCESS) return MpiFailure("MPI_Comm_accept", rc);
          return c;
        },
        [](MPI_Comm& late) { MPI_Comm_free(&late); }, cancel);
    if (!comm.ok()) {
      accept_abandoned_ = true;
      GetRuntime().abandoned++;
      return comm.status();
    }
    return std::unique_ptr<Channel>(new MpiChannel(*comm, tuning_));
  }

 private:
  std::string port_;
  MpiTuning tuning_;
  bool accept_abandoned_ = false;
};

class MpiTransport : public Transport {
 public:
  explicit MpiTransport(MpiTuning tuning) : tuning_(tuning) {}

  std::string rendezvous() const override { return CurrentMpiRendezvous(); }

  Status health() const override {
    Runtime& rt = GetRuntime();
    if (rt.private_server_exited && rt.private_server_exited->load()) {
      return Status(StatusCode::kUnavailable, "the private MPI rendezvous (ompi-server pid " +
                                                  std::to_string(rt.private_server) + ") exited");
    }
    if (rt.ports_stuck.load()) {
      return Status(StatusCode::kUnavailable,
                    "MPI stopped answering (MPI_Open_port did not return within " +
                        std::to_string(kOpenPortTimeout.count()) + " s)");
    }
    // A dead rendezvous (a shared ompi-server that was stopped) would leave every connect and
    // accept waiting until its deadline: MPI cannot tell. So it is probed before every admission
    // (one TCP connect), except that a failed probe stands for a second: a flood of clients
    // against a dead, possibly unreachable rendezvous costs one 500 ms probe a second.
    std::lock_guard<std::mutex> lock(rt.probe_mu);
    if (rt.rendezvous_health.ok() || Clock::now() - rt.probed > std::chrono::seconds(1)) {
      rt.rendezvous_health =
          ProbeRendezvous(CurrentMpiRendezvous(), std::chrono::milliseconds(500));
      rt.probed = Clock::now();
    }
    return rt.rendezvous_health;
  }

  Result<std::unique_ptr<Listener>> Listen() override {
    Status healthy = health();
    if (!healthy.ok()) return healthy;
    Result<std::string> port = CallWithDeadline<std::string>(
        "MPI_Open_port", Clock::now() + kOpenPortTimeout, []() -> Result<std::string> {
          char name[MPI_MAX_PORT_NAME] = {};
          int rc = MPI_Open_port(MPI_INFO_NULL, name);
          if (rc != MPI_SUCCESS) return MpiFailure("MPI_Open_port", rc);
          return std::string(name);
        });
    if (!port.ok()) {
      if (port.status().code() == StatusCode::kTimeout) GetRuntime().ports_stuck = true;
      return port.status();
    }
    GetRuntime().open_ports++;
    return std::unique_ptr<Listener>(new MpiListener(*port, tuning_));
  }

  Result<std::unique_ptr<Channel>> Connect(const std::string& address,
                                           Clock::time_point deadline) override {
    Result<MPI_Comm> comm = CallWithDeadline<MPI_Comm>(
        "MPI_Comm_connect", deadline,
        [address]() -> Result<MPI_Comm> {
          MPI_Comm c;
          int rc = MPI_Comm_connect(address.c_str(), MPI_INFO_NULL, 0, MPI_COMM_SELF, &c);
          if (rc != MPI_SUCCESS) return MpiFailure("MPI_Comm_connect", rc);
          return c;
        },
        [](MPI_Comm& late) { MPI_Comm_free(&late); });
    if (!comm.ok()) {
      if (comm.status().code() == StatusCode::kTimeout) GetRuntime().abandoned++;
      return comm.status();
    }
    return std::unique_ptr<Channel>(new MpiChannel(*comm, tuning_));
  }

 private:
  MpiTuning tuning_;
};

}  // namespace

Result<std::string> ResolveRendezvous(const std::string& spec) {
  if (spec.rfind("file:", 0) != 0) return spec;
  const std::string path = spec.substr(5);
  std::string uri = Trim(ReadWholeFile(path));
  if (uri.empty()) {
    return Status(StatusCode::kNotFound, "rendezvous file '" + path + "' is missing or empty");
  }
  return uri;
}

int OpenMpiPorts() { return GetRuntime().open_ports.load(); }

std::string CurrentMpiRendezvous() {
  Runtime& rt = GetRuntime();
  std::lock_guard<std::mutex> lock(rt.mu);
  return rt.initialised ? rt.rendezvous : std::string();
}

Result<std::shared_ptr<Transport>> MakeMpiTransport(const TransportOptions& options,
                                                    const std::string& rendezvous_uri,
                                                    MpiTuning tuning) {
  const std::string& configured = options.rendezvous_uri;
  if (!configured.empty() && !rendezvous_uri.empty()) {
    Result<std::string> a = ResolveRendezvous(configured);
    Result<std::string> b = ResolveRendezvous(rendezvous_uri);
    if (a.ok() && b.ok() && *a != *b) {
      return Status(StatusCode::kInvalidArgument,
                    "configured rendezvous '" + *a + "' differs from the peer's '" + *b + "'");
    }
  }
  Status status = EnsureMpi(options, rendezvous_uri.empty() ? configured : rendezvous_uri);
  if (!status.ok()) return status;
  return std::shared_ptr<Transport>(std::make_shared<MpiTransport>(tuning));
}

void SetMpiTuningEnvironment(const TransportOptions& options) {
  // DESIGN.md's measured recipe; a user may override any of it through the environment.
  setenv("OMPI_MCA_pml", "ucx", 0);
  setenv("OMPI_MCA_pml_ucx_tls", "any", 0);
  setenv("OMPI_MCA_pml_ucx_devices", "any", 0);
  setenv("OMPI_MCA_osc", "^ucx", 0);
  setenv("UCX_TLS", "tcp", 0);
  setenv("UCX_NET_DEVICES", options.interface.c_str(), 0);
  setenv("OMPI_MCA_btl_tcp_if_include", options.interface.c_str(), 0);
  setenv("OMPI_MCA_oob_tcp_if_include", options.interface.c_str(), 0);
}

}  // namespace netloader::transfer
