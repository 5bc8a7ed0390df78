#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <zmq.hpp>

#include "client/client_internal.h"
#include "netloader/fingerprint.h"
#include "netloader/src/auth.h"
#include "netloader/src/host_memory.h"
#include "netloader/src/log.h"
#include "netloader/src/manifest.h"
#include "netloader/src/wire.h"
#include "netloader/src/xxh3.h"
#include "transfer/mpi_runtime.h"
#include "transfer/mpi_transport.h"

namespace netloader {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string ClientName() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string(host) + ":" + std::to_string(getpid());
}

// The ZeroMQ side of one attempt: a DEALER connected to one source, CURVE-authenticated when
// there is a secret.
class ControlChannel {
 public:
  ControlChannel(const std::string& source, const std::string& secret)
      : source_(source), secret_(secret) {}

  Status Connect() {
    try {
      socket_ = zmq::socket_t(context_, zmq::socket_type::dealer);
      // Long enough for a final Done to leave, short enough never to hold up the caller.
      socket_.set(zmq::sockopt::linger, 1000);
      socket_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxClientMessageBytes));
      if (!secret_.empty()) MakeCurveClient(socket_, secret_);
      monitor_.emplace(context_, socket_, "client",
                       SocketMonitor::kHandshakeFailures | SocketMonitor::kConnects);
      socket_.connect(source_);
    } catch (const zmq::error_t& e) {
      return Status(StatusCode::kInvalidArgument, "bad source endpoint: " + std::string(e.what()));
    }
    return Status::Ok();
  }

  Status HandshakeFailed(SocketMonitor::Event event) {
    // A failure without detail (the peer hung up) often comes just before the one that says
    // why (mechanism mismatch): give that a moment to arrive.
    zmq::pollitem_t item = {static_cast<void*>(monitor_->socket()), 0, ZMQ_POLLIN, 0};
    const auto until = Clock::now() + std::chrono::milliseconds(200);
    while (event.id == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL && Clock::now() < until &&
           zmq::poll(&item, 1, std::chrono::milliseconds(20)) >= 0) {
      std::optional<SocketMonitor::Event> next = monitor_->Read();
      if (next && next->handshake_failed()) event = *next;
    }
    // Nothing queued here may ever leave: do not retry the handshake while closing.
    socket_.set(zmq::sockopt::linger, 0);
    return Status(StatusCode::kPermissionDenied, DescribeHandshakeFailure(event, !secret_.empty()));
  }

  // What a monitor event means for the exchange under way: OK to go on waiting, or why not.
  Status Interpret(const SocketMonitor::Event& event) {
    if (event.id == ZMQ_EVENT_CONNECTED) connected_ = true;
    if (event.handshake_failed()) return HandshakeFailed(event);
    // libzmq retries a failed connect for ever; a connect that failed before any succeeded
    // (refused: nothing listens there; or unreachable) is known at once, so say so at once
    // instead of waiting out the register deadline. A source that accepts the connection but
    // does not answer still gets the whole deadline.
    if (event.id == ZMQ_EVENT_CONNECT_RETRIED && !connected_) {
      socket_.set(zmq::sockopt::linger, 0);
      return Status(StatusCode::kUnavailable,
                    "cannot connect to " + source_ +
                        ": the connection was refused or the host is unreachable (is a "
                        "netloader server listening there?)");
    }
    return Status::Ok();
  }

  Status Send(wire::Envelope& message) {
    const std::string payload = Encode(message);
    try {
      if (!socket_.send(zmq::buffer(payload), zmq::send_flags::dontwait)) {
        return Status(StatusCode::kUnavailable, "cannot queue a message (peer not reachable)");
      }
    } catch (const zmq::error_t& e) {
      return Status(StatusCode::kUnavailable, std::string("send failed: ") + e.what());
    }
    return Status::Ok();
  }

  // Waits for one message. A failed handshake (secrets differ, or only one side has one) fails
  // at once with PermissionDenied, a refused connection with Unavailable, instead of waiting out
  // `timeout`.
  Result<wire::Envelope> Receive(std::chrono::milliseconds timeout) {
    zmq::pollitem_t items[] = {{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0},
                               {static_cast<void*>(monitor_->socket()), 0, ZMQ_POLLIN, 0}};
    const auto deadline = Clock::now() + timeout;
    try {
      while (true) {
        const auto left = std::max(
            std::chrono::milliseconds(0),
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
        zmq::poll(items, 2, left);  // a timeout of 0 just looks
        if (items[1].revents & ZMQ_POLLIN) {
          while (std::optional<SocketMonitor::Event> event = monitor_->Read()) {
            Status status = Interpret(*event);
            if (!status.ok()) return status;
          }
        }
        zmq::message_t frame;
        if ((items[0].revents & ZMQ_POLLIN) && socket_.recv(frame, zmq::recv_flags::dontwait)) {
          return Decode(frame.data(), frame.size(), kMaxClientMessageBytes);
        }
        if (Clock::now() >= deadline) {
          return Status(StatusCode::kTimeout, "no answer within " +
                                                  std::to_string(timeout.count()) +
                                                  " ms (is a netloader server listening there?)");
        }
      }
    } catch (const zmq::error_t& e) {
      return Status(StatusCode::kUnavailable, std::string("receive failed: ") + e.what());
    }
  }

 private:
  std::string source_;
  std::string secret_;
  zmq::context_t context_{1};
  zmq::socket_t socket_;
  std::optional<SocketMonitor> monitor_;
  bool connected_ = false;  // the TCP connection was made at least once
};

// From Accept until Done: a heartbeat to the source every interval, so that it keeps this
// client's session, and `lost` once the source has answered none for the timeout (it died or
// froze), so that the transfer stops at once instead of waiting for the stall deadline. Owns
// the control socket while it runs.
class Heartbeats {
 public:
  Heartbeats(ControlChannel& control, uint64_t session, const ClientOptions& options)
      : control_(control), session_(session), options_(options) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~Heartbeats() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();  // at once: the thread sleeps on wake_ between beats
  }
  const std::atomic<bool>& lost() const { return lost_; }
  std::string reason() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reason_;
  }

 private:
  void Loop() {
    auto last_answer = Clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      lock.unlock();
      wire::Envelope beat;
      beat.mutable_heartbeat()->set_session_id(session_);
      (void)control_.Send(beat);  // a source that is gone shows as silence
      lock.lock();
      if (wake_.wait_for(lock, options_.heartbeat_interval, [this] { return stop_; })) return;
      lock.unlock();
      // The answers that came meanwhile (looking only: nothing here waits).
      for (Result<wire::Envelope> reply = control_.Receive(std::chrono::milliseconds(0));
           reply.ok(); reply = control_.Receive(std::chrono::milliseconds(0))) {
        if (reply->has_heartbeat()) last_answer = Clock::now();
        if (reply->has_reject()) {
          return Lose("the source dropped the session: " + reply->reject().reason());
        }
      }
      const auto silent =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - last_answer);
      if (options_.heartbeat_timeout.count() > 0 && silent > options_.heartbeat_timeout) {
        return Lose("the source answered no heartbeat for " + std::to_string(silent.count()) +
                    " ms (it died or froze)");
      }
      lock.lock();
    }
  }

  void Lose(const std::string& why) {
    std::lock_guard<std::mutex> lock(mu_);
    reason_ = why;
    lost_ = true;
  }

  ControlChannel& control_;
  const uint64_t session_;
  const ClientOptions& options_;
  mutable std::mutex mu_;  // guards stop_ and reason_
  std::condition_variable wake_;
  bool stop_ = false;
  std::atomic<bool> lost_{false};
  std::string reason_;
  std::thread thread_;
};

// MPI start-up forks, which write-protects every private page of the process; receiving into
// such pages then takes one copy-on-write fault per 4 KiB page, and faults are slow on these VMs
// (DESIGN.md: 0.35 GB/s; measured 0.27 GB/s end to end). MADV_POPULATE_WRITE (Linux 5.14) makes
// the destination writable again in one call, without faults. Contents are untouched. Best
// effort: older kernels or non-writable ranges just skip it.
void PrefaultForWrite(const ModelView& model) {
  // One call per run of adjacent tensors, not per tensor: models have thousands of small ones.
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  for (const TensorView& t : model.tensors) {
    if (t.size_bytes == 0) continue;
    const auto begin = reinterpret_cast<uintptr_t>(t.data) & ~(page - 1);
    ranges.emplace_back(begin, reinterpret_cast<uintptr_t>(t.data) + t.size_bytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 0; i < ranges.size();) {
    uintptr_t begin = ranges[i].first, end = ranges[i].second;
    // Merge ranges that overlap or leave less than a page between them.
    for (++i; i < ranges.size() && ranges[i].first <= end + page; ++i) {
      end = std::max(end, ranges[i].second);
    }
    (void)PopulateForWrite(reinterpret_cast<void*>(begin), end - begin);
  }
}

// A refusal as a status. When the tensor tables differ the source sent its own, and the
// message names the tensors that differ on each side.
Status RejectStatus(const wire::Reject& reject, const ModelView& destination) {
  std::string message = "refused: " + reject.reason();
  const std::string tables = DescribeTableDifferences(reject.served_tensors(), destination);
  if (!tables.empty()) message += "; " + tables;
  return Status(FromRejectCode(reject.code()), message);
}

// The data plane's start-up (MPI: ~140 ms), begun as early as it can be. With a shared
// rendezvous configured the client need not learn the rendezvous from its source, so it starts
// on a thread of its own while the client connects and registers, instead of after Accept.
class EarlyStart {
 public:
  EarlyStart(transfer::DataPlane& plane, const TransportOptions& options) {
    if (options.rendezvous_uri.empty() || !plane.bound_rendezvous().empty()) return;
    started_ = std::async(std::launch::async, [&plane] { (void)plane.Start(""); });
  }
  EarlyStart(const EarlyStart&) = delete;
  EarlyStart& operator=(const EarlyStart&) = delete;
  ~EarlyStart() { Wait(); }
  // Until the start-up begun here returned (bounded by TransportOptions::startup_timeout). Its
  // outcome is not kept: DataPlane::Start, called again, reports a failure again.
  void Wait() {
    if (started_.valid()) started_.get();
  }

 private:
  std::future<void> started_;
};

// What a load keeps from one source to the next, so that it resumes instead of starting over.
struct LoadProgress {
  ByteRanges verified;            // stream bytes received and verified so far
  std::vector<uint64_t> content;  // the per-tensor digests of the sources they came from
  uint64_t bytes_received = 0;    // chunks posted for, over every source (LoadStats)
  uint64_t bytes_reused = 0;      // found already in place (ClientOptions::destination_filled)
};

// Requests carry at most this many ranges each, well under a server's 64 KiB message limit.
constexpr int kMaxRangesPerRequest = 2000;

class Attempt {
 public:
  Attempt(const ClientOptions& options, const ModelView& destination,
          const Fingerprint& fingerprint, transfer::DataPlane& plane, EarlyStart& early,
          LoadProgress& progress, const std::string& source, internal::LoadTuning tuning)
      : options_(options),
        tuning_(tuning),
        destination_(destination),
        fingerprint_(fingerprint),
        plane_(plane),
        early_(early),
        progress_(progress),
        source_(source),
        control_(source, options.secret) {}

  Result<LoadStats> Run() {
    const auto start = Clock::now();
    Status status = control_.Connect();
    if (!status.ok()) return status;
    Result<wire::Accept> accept = Register();
    if (!accept.ok()) return accept.status();
    register_seconds_ = SecondsSince(start);
    session_ = accept->session_id();
    Result<LoadStats> stats = Transfer(*accept, start);
    if (!stats.ok()) SendDone(false, failed_chunk_, stats.status().ToString());
    return stats;
  }

  // Bytes this source delivered and were verified.
  uint64_t verified_bytes() const { return received_; }

 private:
  // Sends Register until Accepted, Rejected, or Busy for longer than busy_timeout.
  Result<wire::Accept> Register() {
    const auto busy_deadline = Clock::now() + options_.busy_timeout;
    while (true) {
      wire::Envelope request;
      wire::Register* reg = request.mutable_register_();
      ToWire(fingerprint_, reg->mutable_fingerprint());
      reg->set_rendezvous_uri(plane_.bound_rendezvous());
      reg->set_client_name(ClientName());
      Status sent = control_.Send(request);
      if (!sent.ok()) return sent;
      Result<wire::Envelope> reply = control_.Receive(options_.register_timeout);
      if (!reply.ok()) return reply.status();
      switch (reply->body_case()) {
        case wire::Envelope::kAccept:
          return reply->accept();
        case wire::Envelope::kReject:
          return RejectStatus(reply->reject(), destination_);
        case wire::Envelope::kBusy: {
          const auto wait = std::chrono::milliseconds(
              std::clamp<uint32_t>(reply->busy().retry_after_ms(), 10, 10000));
          if (Clock::now() + wait > busy_deadline) {
            return Status(StatusCode::kBusy,
                          "source stayed busy (" + std::to_string(reply->busy().active()) + " of " +
                              std::to_string(reply->busy().limit()) + " slots in use) for " +
                              std::to_string(options_.busy_timeout.count()) + " ms");
          }
          Log().debug("{} is busy; retrying in {} ms", source_, wait.count());
          std::this_thread::sleep_for(wait);
          continue;
        }
        default:
          return Status(StatusCode::kProtocolMismatch, "unexpected reply to Register");
      }
    }
  }

  Result<LoadStats> Transfer(const wire::Accept& accept, Clock::time_point start) {
    Result<Manifest> manifest = FromWire(accept.manifest());
    if (!manifest.ok()) return manifest.status();
    // The server matched the fingerprint's table digest; a manifest for another table means a
    // broken or lying source.
    if (manifest->table_digest != fingerprint_.table_digest ||
        manifest->tensor_digests.size() != destination_.tensors.size()) {
      return Status(StatusCode::kFingerprintMismatch,
                    "the source's manifest is for another tensor table (" +
                        std::to_string(manifest->tensor_digests.size()) + " tensors, digest '" +
                        manifest->table_digest + "'; expected " +
                        std::to_string(destination_.tensors.size()) + ", '" +
                        fingerprint_.table_digest + "')");
    }
    Result<ReceivePlan> receive =
        ReceivePlan::Make(destination_, manifest->chunk_bytes, std::move(manifest->chunk_digests),
                          manifest->model_digest);
    if (!receive.ok()) return receive.status();
    // Bytes verified from an earlier source are kept only if this one holds the same content.
    if (progress_.verified.bytes() > 0 && manifest->tensor_digests != progress_.content) {
      Log().warn(
          "{} holds other content than the source that delivered the {} bytes verified "
          "so far; loading all of it from {}",
          source_, progress_.verified.bytes(), source_);
      progress_.verified.Clear();
      progress_.bytes_reused = 0;
    }
    progress_.content = manifest->tensor_digests;
    if (options_.destination_filled) KeepWhatIsInPlace(*receive);
    const std::vector<size_t> needed = receive->Missing(progress_.verified);
    if (!needed.empty())
      Log().debug("asking {} for {} of {} chunks", source_, needed.size(), receive->size());
    Status status = SendRequests(needed);
    if (!status.ok()) return status;
    beats_.emplace(control_, session_, options_);

    auto phase = Clock::now();
    early_.Wait();
    Result<std::shared_ptr<transfer::Transport>> transport = plane_.Start(accept.rendezvous_uri());
    if (!transport.ok()) return transport.status();
    PrefaultForWrite(destination_);
    const double transport_seconds = SecondsSince(phase);
    if (options_.connect_hook) options_.connect_hook(ConnectEvent::kBefore);
    phase = Clock::now();
    Result<std::unique_ptr<transfer::Channel>> channel =
        (*transport)->Connect(accept.mpi_port(), Clock::now() + options_.connect_timeout);
    if (options_.connect_hook) options_.connect_hook(ConnectEvent::kAfter);
    if (!channel.ok()) return channel.status().WithContext("MPI connect to " + source_);
    const double connect_seconds = SecondsSince(phase);
    phase = Clock::now();

    Log().debug("connected to {} over MPI; receiving {} chunks", source_, needed.size());
    const uint64_t total = destination_.total_bytes();
    transfer::StreamOptions stream;
    stream.window = options_.window;
    stream.stall_timeout = options_.stall_timeout;
    stream.cancel = &beats_->lost();
    status = receive->Receive(**channel, stream, {options_.staged_receive, tuning_.verify_chunks},
                              needed, [&](size_t c) {
                                const auto [begin, end] = receive->range(c);
                                progress_.verified.Add(begin, end);
                                received_ += end - begin;
                                if (options_.progress) {
                                  options_.progress(progress_.verified.bytes(), total);
                                }
                              });
    progress_.bytes_received += receive->posted_bytes();
    if (!status.ok()) {
      failed_chunk_ = receive->failed_chunk();
      if (beats_->lost()) status = Status(StatusCode::kUnavailable, beats_->reason());
      (*channel)->Abandon();
      return status.WithContext("transfer from " + source_);
    }
    LoadStats stats;
    stats.source = source_;
    stats.bytes = total;
    stats.tensors = destination_.tensors.size();
    stats.chunks = receive->size();
    stats.transfer_seconds = SecondsSince(phase);
    stats.seconds = SecondsSince(start);
    stats.register_seconds = register_seconds_;
    stats.transport_seconds = transport_seconds;
    stats.connect_seconds = connect_seconds;
    stats.transfer_gbps = stats.transfer_seconds > 0 ? received_ / stats.transfer_seconds / 1e9 : 0;
    stats.tensor_digests = manifest->tensor_digests;
    // Done before the collective disconnect: the server disconnects once it reads a verified Done.
    SendDone(true, -1, "");
    done_sent_ = true;
    channel->reset();
    return stats;
  }

  // A delta load: the chunks whose bytes in the destination already match the source's digests
  // count as verified (one pass over the destination, hashing at memory speed).
  void KeepWhatIsInPlace(const ReceivePlan& receive) {
    for (size_t c : receive.Missing(progress_.verified)) {
      if (!receive.Holds(c)) continue;
      const auto [begin, end] = receive.range(c);
      progress_.verified.Add(begin, end);
      progress_.bytes_reused += end - begin;
    }
    Log().debug("{} of {} bytes already in place", progress_.bytes_reused,
                destination_.total_bytes());
  }

  // The chunks to stream, as Requests of at most kMaxRangesPerRequest ranges each.
  Status SendRequests(const std::vector<size_t>& chunks) {
    size_t begin = 0;
    while (begin < chunks.size()) {
      size_t end = begin, runs = 0;
      while (end < chunks.size() && runs < kMaxRangesPerRequest) {
        ++runs;
        for (++end; end < chunks.size() && chunks[end] == chunks[end - 1] + 1;) ++end;
      }
      wire::Envelope request;
      request.mutable_request()->set_session_id(session_);
      ToWire(std::vector<size_t>(chunks.begin() + begin, chunks.begin() + end),
             request.mutable_request());
      Status sent = control_.Send(request);
      if (!sent.ok()) return sent.WithContext("sending a Request to " + source_);
      begin = end;
    }
    return Status::Ok();
  }

  void SendDone(bool verified, int64_t failed_chunk, const std::string& message) {
    if (session_ == 0 || done_sent_) return;
    beats_.reset();  // the socket is ours again
    wire::Envelope envelope;
    wire::Done* done = envelope.mutable_done();
    done->set_session_id(session_);
    done->set_verified(verified);
    done->set_failed_chunk(failed_chunk);
    done->set_message(message);
    Status sent = control_.Send(envelope);
    if (!sent.ok()) Log().debug("could not send Done to {}: {}", source_, sent.message());
    done_sent_ = true;
  }

  const ClientOptions& options_;
  const internal::LoadTuning tuning_;
  const ModelView& destination_;
  const Fingerprint& fingerprint_;
  transfer::DataPlane& plane_;
  EarlyStart& early_;
  LoadProgress& progress_;
  const std::string source_;
  ControlChannel control_;
  std::optional<Heartbeats> beats_;  // from Accept until Done
  uint64_t received_ = 0;            // bytes received from this source and verified
  uint64_t session_ = 0;
  int64_t failed_chunk_ = -1;
  bool done_sent_ = false;
  double register_seconds_ = 0;
};

Status ValidateOptions(const ClientOptions& options) {
  if (options.sources.empty()) return Status(StatusCode::kInvalidArgument, "no sources given");
  for (const std::string& s : options.sources) {
    if (s.empty()) return Status(StatusCode::kInvalidArgument, "a source endpoint is empty");
  }
  if (options.window < 1) return Status(StatusCode::kInvalidArgument, "window must be >= 1");
  if (options.heartbeat_interval.count() < 1 ||
      options.heartbeat_interval > kMaxHeartbeatInterval ||
      (options.heartbeat_timeout.count() > 0 &&
       options.heartbeat_timeout <= options.heartbeat_interval)) {
    return Status(StatusCode::kInvalidArgument, "heartbeat_interval must be within [1, " +
                                                    std::to_string(kMaxHeartbeatInterval.count()) +
                                                    "] ms and below heartbeat_timeout (0: never)");
  }
  Status secret = ValidateSecret(options.secret);
  if (!secret.ok()) return secret.WithContext("ClientOptions::secret");
  return ValidatePartition(options.partition);
}

}  // namespace

namespace internal {

Result<LoadStats> Load(const ClientOptions& options, const ModelView& destination,
                       transfer::DataPlane& plane, LoadTuning tuning) {
  Status status = ValidateOptions(options);
  if (status.ok()) status = ValidateModelView(destination);
  if (!status.ok()) return status;
  const Fingerprint fingerprint = MakeFingerprint(destination, options.model_id, options.partition);
  std::vector<SourceAttempt> attempts;
  std::string failures;
  StatusCode last = StatusCode::kUnavailable;
  const auto start = Clock::now();
  EarlyStart early(plane, options.transport);
  LoadProgress progress;
  for (const std::string& source : options.sources) {
    Log().debug("loading {} tensors ({} bytes, {} verified already) from {}",
                destination.tensors.size(), destination.total_bytes(), progress.verified.bytes(),
                source);
    Attempt attempt(options, destination, fingerprint, plane, early, progress, source, tuning);
    Result<LoadStats> result = attempt.Run();
    attempts.push_back(
        {source, result.ok() ? Status::Ok() : result.status(), attempt.verified_bytes()});
    if (result.ok()) {
      result->attempts = std::move(attempts);
      result->bytes_received = progress.bytes_received;
      result->bytes_reused = progress.bytes_reused;
      result->seconds = SecondsSince(start);
      result->gbps = result->bytes / result->seconds / 1e9;
      Log().info(
          "loaded {} tensors, {} bytes from {} in {:.3f} s (the transfer itself {:.3f} s at "
          "{:.2f} GB/s), every chunk verified",
          result->tensors, result->bytes, source, result->seconds, result->transfer_seconds,
          result->transfer_gbps);
      return result;
    }
    Log().warn("source {} failed: {}", source, result.status().ToString());
    failures += (failures.empty() ? "" : "; ") + source + ": " + result.status().ToString();
    last = result.status().code();
  }
  return Status(last, "no source delivered the model (" + failures + ")");
}

}  // namespace internal

Status VerifyModel(const ModelView& model, const LoadStats& stats) {
  if (model.tensors.size() != stats.tensor_digests.size()) {
    return Status(StatusCode::kInvalidArgument,
                  "the model has " + std::to_string(model.tensors.size()) +
                      " tensors; the source listed " + std::to_string(stats.tensor_digests.size()));
  }
  std::string differing;
  size_t count = 0;
  for (size_t i = 0; i < model.tensors.size(); ++i) {
    const TensorView& t = model.tensors[i];
    if (XXH3_64bits(t.data, t.size_bytes) == stats.tensor_digests[i]) continue;
    if (++count <= 5) differing += (differing.empty() ? "" : ", ") + t.name;
  }
  if (count == 0) return Status::Ok();
  if (count > 5) differing += " and " + std::to_string(count - 5) + " more";
  return Status(StatusCode::kChecksumMismatch,
                std::to_string(count) + " tensors differ from the source's digests: " + differing);
}

Status InitializeTransport(const TransportOptions& options) {
  if (options.rendezvous_uri.empty()) {
    return Status(
        StatusCode::kInvalidArgument,
        "InitializeTransport needs a shared rendezvous (TransportOptions::rendezvous_uri)");
  }
  Result<std::shared_ptr<transfer::Transport>> transport = transfer::MakeMpiTransport(options);
  return transport.ok() ? Status::Ok() : transport.status();
}

void PrepareMpiEnvironment(const TransportOptions& options) {
  transfer::SetMpiTuningEnvironment(options);
}

Result<LoadStats> Load(const ClientOptions& options, const ModelView& destination) {
  return internal::Load(options, destination, *transfer::MakeMpiDataPlane(options.transport));
}

}  // namespace netloader
