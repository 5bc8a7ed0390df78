#include "transfer/mpi/transport.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <deque>
#include <vector>

#include "transfer/call_with_deadline.h"
#include "transfer/helper/transport.h"
#include "transfer/mpi/progress.h"
#include "transfer/mpi/rendezvous.h"
#include "transfer/mpi/runtime.h"

namespace netloader::transfer {
namespace {

constexpr int kDataTag = 7;  // PROTOCOL.md, section 7.3
// MPI_Comm_disconnect is collective; a peer that vanished makes it wait forever.
constexpr std::chrono::seconds kDisconnectTimeout{5};
// A failed receive waits for its posted receives to be cancelled or completed (a receive that has
// matched a message cannot be cancelled, and goes on writing into its buffer until the message is
// in), so that the caller may free or refill the destination once Receive returns. From a live
// peer the rest of a matched message arrives at the link's rate; a dead one sends nothing more.
// So the wait ends once none has completed for kSettleQuiet (a 1 MiB chunk on an 84 Mbit/s
// link), and after kSettleTimeout at most: a dead source costs its failover 0.1 s.
constexpr std::chrono::milliseconds kSettleQuiet{100};
constexpr std::chrono::seconds kSettleTimeout{2};

class MpiChannel : public Channel {
 public:
  explicit MpiChannel(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }

  ~MpiChannel() override {
    if (failed_) {
      // The peer may be dead: a collective disconnect could wait forever. Nor is the
      // communicator freed: a receive cancelled on it may not really be cancelled (UCX cannot
      // always), and a freed communicator's context id goes to the next one, whose messages
      // then met those leftovers (measured: the next source's first receive failed with
      // MPI_ERR_INTERN). Leaked, the id stays taken; one small object per failed peer.
      return;
    }
    MPI_Comm comm = comm_;
    Result<int> done = CallWithDeadline<int>(
        "MPI_Comm_disconnect", Clock::now() + kDisconnectTimeout,
        [comm]() mutable -> Result<int> { return MPI_Comm_disconnect(&comm); });
    if (!done.ok()) NoteAbandonedCall();
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
    ProgressEngine& engine = ProgressEngine::Get();
    std::deque<std::pair<size_t, std::shared_ptr<ProgressEngine::Op>>> in_flight;  // oldest first
    const size_t window = static_cast<size_t>(std::max(1, options.window));
    size_t next = 0;
    auto last_progress = Clock::now();
    auto fail = [&](Status status) {
      failed_ = true;
      if (sending) {
        for (auto& entry : in_flight) engine.Cancel(entry.second);
        return status;
      }
      for (auto& entry : in_flight) engine.Withdraw(entry.second);
      const auto give_up = Clock::now() + kSettleTimeout;
      auto quiet_until = Clock::now() + kSettleQuiet;
      size_t unsettled = 0;
      for (auto& entry : in_flight) {
        if (engine.WaitFor(*entry.second, std::min(give_up, quiet_until), nullptr) ==
            ProgressEngine::Wait::kDone) {
          quiet_until = Clock::now() + kSettleQuiet;
          continue;
        }
        engine.Cancel(entry.second);
        ++unsettled;
      }
      if (unsettled == 0) return status;
      return Status(status.code(), status.message() + "; " + std::to_string(unsettled) +
                                       " receive(s) could not be withdrawn and may still write "
                                       "into the destination");
    };
    while (next < chunks.size() || !in_flight.empty()) {
      while (next < chunks.size() && in_flight.size() < window) {
        if (options.prepare) {
          Status prepared = options.prepare(next);
          if (!prepared.ok()) return fail(prepared);
          last_progress = std::max(last_progress, Clock::now());
        }
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
  bool failed_ = false;  // a stream failed: the peer may be gone
};

class MpiListener : public Listener {
 public:
  explicit MpiListener(std::string port) : port_(std::move(port)) {}
  ~MpiListener() override {
    // Closing a port while an abandoned accept still waits on it is not safe; leave it then.
    if (accept_abandoned_) return;
    MPI_Close_port(port_.data());
    NotePortClosed();
  }
  const std::string& address() const override { return port_; }
  std::string rendezvous() const override { return CurrentMpiRendezvous(); }

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
      NoteAbandonedCall();
      return comm.status();
    }
    return std::unique_ptr<Channel>(new MpiChannel(*comm));
  }

 private:
  std::string port_;
  bool accept_abandoned_ = false;
};

class MpiTransport : public Transport {
 public:
  std::string rendezvous() const override { return CurrentMpiRendezvous(); }
  Status health() const override { return MpiHealth(); }

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
      if (port.status().code() == StatusCode::kTimeout) NotePortsStuck();
      return port.status();
    }
    NotePortOpened();
    return std::unique_ptr<Listener>(new MpiListener(*port));
  }

  Result<std::unique_ptr<Channel>> Connect(const std::string& address, Clock::time_point deadline,
                                           const std::atomic<bool>* cancel) override {
    Result<MPI_Comm> comm = CallWithDeadline<MPI_Comm>(
        "MPI_Comm_connect", deadline,
        [address]() -> Result<MPI_Comm> {
          MPI_Comm c;
          int rc = MPI_Comm_connect(address.c_str(), MPI_INFO_NULL, 0, MPI_COMM_SELF, &c);
          if (rc != MPI_SUCCESS) return MpiFailure("MPI_Comm_connect", rc);
          return c;
        },
        [](MPI_Comm& late) { MPI_Comm_free(&late); }, cancel);
    if (!comm.ok()) {
      const StatusCode code = comm.status().code();
      if (code == StatusCode::kTimeout || code == StatusCode::kCancelled) NoteAbandonedCall();
      return comm.status();
    }
    return std::unique_ptr<Channel>(new MpiChannel(*comm));
  }
};

class MpiDataPlane : public DataPlane {
 public:
  explicit MpiDataPlane(TransportOptions options) : options_(std::move(options)) {}
  std::string bound_rendezvous() const override { return CurrentMpiRendezvous(); }
  Result<std::shared_ptr<Transport>> Start(const std::string& peer_rendezvous) override {
    return MakeMpiTransport(options_, peer_rendezvous);
  }

 private:
  const TransportOptions options_;
};

// Whether `options` put MPI in helper processes: asked for, and the host runs no MPI of its own.
bool UseHelpers(const TransportOptions& options) {
  int host_runs_mpi = 0;
  MPI_Initialized(&host_runs_mpi);
  return options.mpi_helpers && !host_runs_mpi;
}

}  // namespace

std::shared_ptr<DataPlane> MakeMpiDataPlane(const TransportOptions& options) {
  if (UseHelpers(options)) return helper::MakeHelperDataPlane(options);
  return std::make_shared<MpiDataPlane>(options);
}

Result<std::shared_ptr<Transport>> MakeMpiTransport(const TransportOptions& options,
                                                    const std::string& rendezvous_uri) {
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
  return std::shared_ptr<Transport>(std::make_shared<MpiTransport>());
}

}  // namespace netloader::transfer

// The public entry points of netloader/transport.h.
namespace netloader {

Status InitializeTransport(const TransportOptions& options) {
  if (options.rendezvous_uri.empty()) {
    return Status(
        StatusCode::kInvalidArgument,
        "InitializeTransport needs a shared rendezvous (TransportOptions::rendezvous_uri)");
  }
  if (transfer::UseHelpers(options)) return transfer::helper::PrestartHelper(options);
  Result<std::shared_ptr<transfer::Transport>> transport = transfer::MakeMpiTransport(options);
  return transport.ok() ? Status::Ok() : transport.status();
}

void PrepareMpiEnvironment(const TransportOptions& options) {
  transfer::SetMpiTuningEnvironment(options);
}

}  // namespace netloader
