#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <zmq.hpp>

#include "client/client_internal.h"
#include "netloader/fingerprint.h"
#include "netloader/src/base/host_memory.h"
#include "netloader/src/base/log.h"
#include "netloader/src/base/xxh3.h"
#include "netloader/src/control/auth.h"
#include "netloader/src/protocol/wire.h"
#include "netloader/src/stream/manifest.h"
#include "netloader/src/stream/relay_feed.h"
#include "transfer/mpi/transport.h"

namespace netloader {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// How often a waiting load looks at ClientOptions::cancel.
constexpr std::chrono::milliseconds kCancelCheck{50};

bool IsCancelled(const std::atomic<bool>* cancel) { return cancel != nullptr && cancel->load(); }

Status CancelledStatus() { return Status(StatusCode::kCancelled, "the load was cancelled"); }

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
    if (event.id == ZMQ_EVENT_DISCONNECTED) disconnected_ = true;
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
    // The connection was made, then closed, and reconnecting is refused: the source's process
    // is gone (a host that vanished closes nothing: the heartbeat deadline finds that).
    if (event.id == ZMQ_EVENT_CONNECT_RETRIED && disconnected_) {
      socket_.set(zmq::sockopt::linger, 0);
      return Status(StatusCode::kUnavailable,
                    "the source closed the connection and refuses a new one (its process exited)");
    }
    return Status::Ok();
  }

  // Nothing still queued needs to leave: the source is gone.
  void DropPending() { socket_.set(zmq::sockopt::linger, 0); }

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
  // `timeout`; `cancel` becoming true, with Cancelled (looked at every 50 ms).
  Result<wire::Envelope> Receive(std::chrono::milliseconds timeout,
                                 const std::atomic<bool>* cancel = nullptr) {
    zmq::pollitem_t items[] = {{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0},
                               {static_cast<void*>(monitor_->socket()), 0, ZMQ_POLLIN, 0}};
    const auto deadline = Clock::now() + timeout;
    try {
      while (true) {
        const auto left = std::max(
            std::chrono::milliseconds(0),
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
        zmq::poll(items, 2, std::min(left, kCancelCheck));  // a timeout of 0 just looks
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
        if (IsCancelled(cancel)) return CancelledStatus();
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
  bool connected_ = false;     // the TCP connection was made at least once
  bool disconnected_ = false;  // and was closed since
};

// From Accept until Done: a heartbeat to the source every interval, so that it keeps this
// client's session, and `lost` once the source has answered none for the timeout (it died or
// froze), so that the transfer stops at once instead of waiting for the stall deadline. Owns
// the control socket while it runs: other messages (further Requests) go out through Send.
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
  // The transfer must stop: the source was lost, or the load was cancelled.
  const std::atomic<bool>& lost() const { return lost_; }
  // Why, once lost(): Cancelled, or Unavailable naming what happened to the source.
  Status why() const {
    if (cancelled_) return CancelledStatus();
    std::lock_guard<std::mutex> lock(mu_);
    return Status(StatusCode::kUnavailable, reason_);
  }
  // Queues a message for the source; it leaves at once.
  void Send(wire::Envelope message) {
    std::lock_guard<std::mutex> lock(mu_);
    outbox_.push_back(std::move(message));
    wake_.notify_all();
  }

 private:
  void Loop() {
    auto last_answer = Clock::now();
    auto next_beat = Clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      if (IsCancelled(options_.cancel)) {
        cancelled_ = true;
        lost_ = true;
        return;
      }
      std::vector<wire::Envelope> out;
      out.swap(outbox_);
      lock.unlock();
      for (wire::Envelope& message : out) (void)control_.Send(message);
      if (Clock::now() >= next_beat) {
        wire::Envelope beat;
        beat.mutable_heartbeat()->set_session_id(session_);
        (void)control_.Send(beat);  // a source that is gone shows as silence
        next_beat = Clock::now() + options_.heartbeat_interval;
      }
      // The answers that came meanwhile (looking only: nothing here waits).
      for (Result<wire::Envelope> reply = control_.Receive(std::chrono::milliseconds(0));;
           reply = control_.Receive(std::chrono::milliseconds(0))) {
        if (!reply.ok()) {
          if (reply.status().code() == StatusCode::kTimeout) break;  // nothing more waiting
          return Lose(reply.status().message());
        }
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
      // Wake for the next beat, a queued message, the moment the source's silence would exceed
      // the timeout, and every 50 ms to look at the connection (a source whose process exited
      // is known within a reconnect interval, without waiting for the heartbeat deadline) and
      // at ClientOptions::cancel.
      auto wake = std::min(next_beat, Clock::now() + kCancelCheck);
      if (options_.heartbeat_timeout.count() > 0) {
        wake =
            std::min(wake, last_answer + options_.heartbeat_timeout + std::chrono::milliseconds(1));
      }
      wake_.wait_until(lock, wake, [this] { return stop_ || !outbox_.empty(); });
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
  mutable std::mutex mu_;  // guards stop_, outbox_ and reason_
  std::condition_variable wake_;
  bool stop_ = false;
  std::vector<wire::Envelope> outbox_;
  std::atomic<bool> lost_{false};
  std::atomic<bool> cancelled_{false};
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
Status RejectStatus(const wire::Reject& reject, const ModelView& destination, bool partial) {
  std::string message = "refused: " + reject.reason();
  const std::string tables =
      partial ? DescribeSelectionDifferences(reject.served_tensors(), destination)
              : DescribeTableDifferences(reject.served_tensors(), destination);
  if (!tables.empty()) message += "; " + tables;
  std::vector<FieldDiff> diffs;
  for (const wire::FieldDiff& d : reject.diffs()) {
    diffs.push_back({d.field(), d.server_value(), d.client_value()});
  }
  return Status(FromRejectCode(reject.code()), message, std::move(diffs));
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
    std::lock_guard<std::mutex> lock(mu_);  // the sources of a striped load wait together
    if (started_.valid()) started_.get();
  }

 private:
  std::mutex mu_;  // guards started_
  std::future<void> started_;
};

// What the sources of one load share: the stream bytes verified so far and whose weights they
// are, so that a load resumes where a failed source stopped; the bytes each source is fetching
// (striping: sources claim disjoint chunks, a few at a time, so a slower one gets fewer); and
// what LoadStats reports. Thread-safe.
class SharedLoad {
 public:
  SharedLoad(const ClientOptions& options, uint64_t total, internal::RelayFeed* relay)
      : options_(options), total_(total), relay_(relay) {}

  // Attaches a source, by its per-tensor digests, until Detach. Bytes verified under other
  // digests (a source holding other weights of the same layout) are dropped when no other source
  // is attached; while one is, this source is refused instead (never a mix of two models).
  Status Attach(const std::vector<uint64_t>& content, const std::string& source) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!content_.empty() && content != content_) {
      if (attached_ > 0) {
        return Status(StatusCode::kFingerprintMismatch,
                      source +
                          " holds other weights (per-tensor digests) than the sources it "
                          "would be striped with");
      }
      if (verified_.bytes() > 0) {
        Log().warn(
            "{} holds other content than the source that delivered the {} bytes verified "
            "so far; loading all of it from {}",
            source, verified_.bytes(), source);
      }
      verified_.Clear();
      reused_ = 0;
    }
    content_ = content;
    ++attached_;
    return Status::Ok();
  }
  void Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    --attached_;
  }

  // A relay over the destination (ClientOptions::relay) serves the attached source's stream
  // from now on, with what is verified already.
  void Relay(const Manifest& manifest, const std::string& source) {
    if (relay_ == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    Status adopted = relay_->Adopt(manifest);
    if (!adopted.ok()) {
      Log().warn("the relay cannot serve {}'s stream: {}", source, adopted.ToString());
      return;
    }
    verified_.ForEach([&](uint64_t begin, uint64_t end) { relay_->Held(begin, end); });
  }

  // A delta load: the chunks whose bytes already match the source's digests count as verified
  // (one pass over the destination, hashing at memory speed).
  void KeepWhatIsInPlace(const ReceivePlan& plan) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t c : plan.Missing(verified_)) {
      const auto [begin, end] = plan.range(c);
      if (claimed_.Intersects(begin, end) || !plan.Holds(c)) continue;
      verified_.Add(begin, end);
      reused_ += end - begin;
      if (relay_ != nullptr) relay_->Held(begin, end);
    }
  }

  // The load's outcome, for the relay.
  void Ended(const Status& status) {
    if (relay_ != nullptr) relay_->LoadEnded(status);
  }

  // Chunks of `plan`, in order, neither verified nor being fetched from another source, now
  // marked as being fetched: all of them for a lone source; striped, at most `max_chunks`, and
  // fewer as the end nears (a share of what is left), so that the sources finish together.
  // Empty when there are none just now. `*from` is where to start looking: every chunk before
  // it is verified (it moves on with each call, so a long load does not rescan its start).
  std::vector<size_t> Claim(const ReceivePlan& plan, size_t max_chunks, size_t* from) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t limit = max_chunks;
    if (options_.stripe > 1) {
      const uint64_t left = total_ - verified_.bytes() - claimed_.bytes();
      const uint64_t chunk = std::max<uint64_t>(1, total_ / std::max<size_t>(1, plan.size()));
      const size_t share = static_cast<size_t>(left / chunk) / (2 * options_.stripe);
      limit = std::clamp<size_t>(share, 1, max_chunks);
    }
    std::vector<size_t> chunks;
    bool all_verified_so_far = true;
    for (size_t c = *from; c < plan.size() && chunks.size() < limit; ++c) {
      const auto [begin, end] = plan.range(c);
      if (verified_.Covers(begin, end)) {
        if (all_verified_so_far) *from = c + 1;
        continue;
      }
      all_verified_so_far = false;
      if (claimed_.Intersects(begin, end)) continue;
      claimed_.Add(begin, end);
      chunks.push_back(c);
    }
    return chunks;
  }

  void Verified(uint64_t begin, uint64_t end) {
    uint64_t done = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      verified_.Add(begin, end);
      claimed_.Remove(begin, end);
      done = verified_.bytes();
      if (relay_ != nullptr) relay_->Held(begin, end);
    }
    changed_.notify_all();
    if (options_.progress) {
      std::lock_guard<std::mutex> lock(progress_mu_);  // never two calls at once
      options_.progress(done, total_);
    }
  }

  // Gives back claimed chunks of `plan` that were not verified (their source failed), for the
  // other sources to take.
  void Release(const ReceivePlan& plan, const std::vector<size_t>& chunks) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t c : chunks) {
        const auto [begin, end] = plan.range(c);
        if (!verified_.Covers(begin, end)) claimed_.Remove(begin, end);
      }
    }
    changed_.notify_all();
  }

  // Waits until the whole model is verified or another source gave chunks back, for at most
  // `timeout`.
  void WaitForChange(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait_for(lock, timeout);
  }

  bool complete() const {
    std::lock_guard<std::mutex> lock(mu_);
    return verified_.bytes() == total_;
  }
  uint64_t verified_bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return verified_.bytes();
  }
  uint64_t reused_bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reused_;
  }
  void AddReceived(uint64_t bytes) { received_ += bytes; }
  uint64_t received_bytes() const { return received_.load(); }
  // MPI connects one at a time (and the connect hook is called from one thread at a time).
  std::mutex& connect_mu() { return connect_mu_; }

 private:
  const ClientOptions& options_;
  const uint64_t total_;
  internal::RelayFeed* const relay_;  // ClientOptions::relay's, or null
  mutable std::mutex mu_;             // guards the fields below
  std::condition_variable changed_;
  ByteRanges verified_;                // stream bytes received and verified so far
  ByteRanges claimed_;                 // stream bytes a source is fetching
  std::vector<uint64_t> content_;      // the per-tensor digests they were verified under
  int attached_ = 0;                   // sources between Attach and Detach
  uint64_t reused_ = 0;                // found already in place (ClientOptions::destination_filled)
  std::atomic<uint64_t> received_{0};  // chunks posted for, over every source (LoadStats)
  std::mutex progress_mu_;
  std::mutex connect_mu_;
};

class Attempt {
 public:
  // `patterns`: what Register.tensors carries (a partial load), or nothing.
  Attempt(const ClientOptions& options, const ModelView& destination,
          const Fingerprint& fingerprint, const std::vector<std::string>& patterns,
          transfer::DataPlane& plane, EarlyStart& early, SharedLoad& shared,
          const std::string& source, int redirects, ReceiveOptions receiving)
      : options_(options),
        redirects_(redirects),
        receiving_(receiving),
        destination_(destination),
        fingerprint_(fingerprint),
        patterns_(patterns),
        plane_(plane),
        early_(early),
        shared_(shared),
        source_(source),
        control_(source, options.secret) {}
  ~Attempt() {
    if (attached_) shared_.Detach();
  }
  Attempt(const Attempt&) = delete;
  Attempt& operator=(const Attempt&) = delete;

  Result<LoadStats> Run() {
    const auto start = Clock::now();
    Status status = control_.Connect();
    if (!status.ok()) return status;
    Result<wire::Accept> accept = Register();
    if (!accept.ok()) return accept.status();
    register_seconds_ = SecondsSince(start);
    session_ = accept->session_id();
    Result<LoadStats> stats = Transfer(*accept, start);
    if (!stats.ok()) {
      if (beats_ && beats_->lost()) control_.DropPending();  // a lost source takes nothing more
      SendDone(false, failed_chunk_, stats.status().ToString());
    }
    return stats;
  }

  // Bytes this source delivered and were verified.
  uint64_t verified_bytes() const { return received_; }
  // Where the source redirected this client (Run then failed with Unavailable); empty if not.
  const std::vector<std::string>& redirect() const { return redirect_; }

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
      for (const std::string& pattern : patterns_) reg->add_tensors(pattern);
      if (options_.relay != nullptr) reg->set_serve_endpoint(options_.relay->endpoint());
      reg->set_redirects(static_cast<uint32_t>(redirects_));
      Status sent = control_.Send(request);
      if (!sent.ok()) return sent;
      Result<wire::Envelope> reply = control_.Receive(options_.register_timeout, options_.cancel);
      if (!reply.ok()) return reply.status();
      switch (reply->body_case()) {
        case wire::Envelope::kAccept:
          return reply->accept();
        case wire::Envelope::kReject:
          return RejectStatus(reply->reject(), destination_, !options_.tensors.empty());
        case wire::Envelope::kRedirect:
          return Redirected(reply->redirect());
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
          for (const auto until = Clock::now() + wait; Clock::now() < until;) {
            if (IsCancelled(options_.cancel)) return CancelledStatus();
            std::this_thread::sleep_for(
                std::min<Clock::duration>(kCancelCheck, until - Clock::now()));
          }
          continue;
        }
        default:
          return Status(StatusCode::kProtocolMismatch, "unexpected reply to Register");
      }
    }
  }

  Status Redirected(const wire::Redirect& redirect) {
    const int count = redirect.sources_size();
    if (count < 1 || count > kMaxRedirectSources) {
      return Status(StatusCode::kProtocolMismatch,
                    "the source redirected to " + std::to_string(count) + " sources (1 to " +
                        std::to_string(kMaxRedirectSources) + " allowed)");
    }
    std::string listed;
    for (const std::string& to : redirect.sources()) {
      if (to.empty() || to.size() > kMaxEndpointBytes) {
        return Status(StatusCode::kProtocolMismatch,
                      "the source redirected to an empty or overlong endpoint");
      }
      listed += (listed.empty() ? "" : ", ") + to;
    }
    redirect_.assign(redirect.sources().begin(), redirect.sources().end());
    return Status(StatusCode::kUnavailable,
                  "at its fan-out limit; redirected to the relays " + listed);
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
    Result<ReceivePlan> receive = ReceivePlan::Make(
        destination_, manifest->chunk_bytes, manifest->chunk_digests, manifest->model_digest);
    if (!receive.ok()) return receive.status();
    // Bytes verified from an earlier source are kept only if this one holds the same content.
    Status status = shared_.Attach(manifest->tensor_digests, source_);
    if (!status.ok()) return status;
    attached_ = true;
    shared_.Relay(*manifest, source_);
    if (options_.destination_filled) shared_.KeepWhatIsInPlace(*receive);
    // The first chunks are asked for before MPI starts, so the source has the Request when the
    // MPI connection is made. A lone source is asked for everything at once.
    // Striped, chunks are handed out two windows at a time, so that a slower source gets fewer
    // and the sources finish within about one batch of each other.
    const size_t batch = options_.stripe > 1 ? 2 * static_cast<size_t>(options_.window)
                                             : std::numeric_limits<size_t>::max();
    std::vector<size_t> current = shared_.Claim(*receive, batch, &scan_from_);
    beats_.emplace(control_, session_, options_);
    Ask(current);

    auto phase = Clock::now();
    early_.Wait();
    Result<std::shared_ptr<transfer::Transport>> transport = plane_.Start(accept.rendezvous_uri());
    if (!transport.ok()) return Fail(*receive, current, transport.status());
    transport_ = std::move(*transport);
    PrefaultForWrite(destination_);
    const double transport_seconds = SecondsSince(phase);
    Result<std::unique_ptr<transfer::Channel>> channel = Connect(accept.mpi_port());
    if (!channel.ok()) return Fail(*receive, current, channel.status());
    const double connect_seconds = SecondsSince(phase) - transport_seconds;
    phase = Clock::now();

    Log().debug("connected to {} over MPI; receiving {} of {} chunks{}", source_, current.size(),
                receive->size(), options_.stripe > 1 ? " (the first batch)" : "");
    transfer::StreamOptions stream;
    stream.window = options_.window;
    stream.stall_timeout = options_.stall_timeout;
    stream.cancel = &beats_->lost();
    while (!current.empty()) {
      // The next batch is asked for before this one is received, so the source streams on.
      std::vector<size_t> next = shared_.Claim(*receive, batch, &scan_from_);
      Ask(next);
      status = receive->Receive(**channel, stream, receiving_, current, [&](size_t c) {
        const auto [begin, end] = receive->range(c);
        received_ += end - begin;
        shared_.Verified(begin, end);
      });
      if (!status.ok()) {
        shared_.Release(*receive, next);
        failed_chunk_ = receive->failed_chunk();
        if (beats_->lost()) status = beats_->why();
        (*channel)->Abandon();
        return Fail(*receive, current, status.WithContext("transfer from " + source_));
      }
      current = std::move(next);
      // Striped: the rest is being fetched from other sources; take over what one gives back.
      while (current.empty() && !shared_.complete() && !beats_->lost()) {
        shared_.WaitForChange(std::chrono::milliseconds(100));
        current = shared_.Claim(*receive, batch, &scan_from_);
        Ask(current);
      }
    }
    shared_.AddReceived(receive->posted_bytes());
    if (!shared_.complete()) {
      (*channel)->Abandon();
      return beats_->why().WithContext(source_);
    }
    const uint64_t total = destination_.total_bytes();
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
    for (const TensorView& t : destination_.tensors) stats.tensor_names.push_back(t.name);
    stats.tensor_digests = manifest->tensor_digests;
    // Done before the collective disconnect: the server disconnects once it reads a verified Done.
    SendDone(true, -1, "");
    done_sent_ = true;
    channel->reset();
    return stats;
  }

  // Asks the source for `chunks` (none: nothing), as Requests of at most kMaxRangesPerRequest
  // ranges each; they leave through the heartbeat thread, which owns the socket.
  void Ask(const std::vector<size_t>& chunks) {
    wire::Request all;
    ToWire(chunks, &all);
    for (int first = 0; first < all.ranges_size(); first += kMaxRangesPerRequest) {
      wire::Envelope request;
      request.mutable_request()->set_session_id(session_);
      const int end = std::min(all.ranges_size(), first + kMaxRangesPerRequest);
      for (int r = first; r < end; ++r) *request.mutable_request()->add_ranges() = all.ranges(r);
      beats_->Send(std::move(request));
    }
  }

  // The MPI connection to the source; one connect at a time per load (DESIGN.md, "Multi-rank
  // instances"), between the connect hook's two calls.
  Result<std::unique_ptr<transfer::Channel>> Connect(const std::string& port) {
    std::lock_guard<std::mutex> lock(shared_.connect_mu());
    if (options_.connect_hook) options_.connect_hook(ConnectEvent::kBefore);
    Result<std::unique_ptr<transfer::Channel>> channel =
        transport_->Connect(port, Clock::now() + options_.connect_timeout, &beats_->lost());
    if (options_.connect_hook) options_.connect_hook(ConnectEvent::kAfter);
    // Cut short because the source was lost, or because the load was cancelled: say which.
    if (!channel.ok() && beats_->lost())
      return beats_->why().WithContext("MPI connect to " + source_);
    if (!channel.ok()) return channel.status().WithContext("MPI connect to " + source_);
    return channel;
  }

  // This source failed: what it was asked for and did not deliver goes back to the others.
  Status Fail(const ReceivePlan& plan, const std::vector<size_t>& asked, Status status) {
    shared_.Release(plan, asked);
    shared_.AddReceived(plan.posted_bytes());
    return status;
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
  const int redirects_;  // followed so far in this load (Register.redirects)
  std::vector<std::string> redirect_;
  const ReceiveOptions receiving_;
  const ModelView& destination_;
  const Fingerprint& fingerprint_;
  const std::vector<std::string>& patterns_;
  transfer::DataPlane& plane_;
  EarlyStart& early_;
  SharedLoad& shared_;
  bool attached_ = false;  // to shared_, until destroyed
  size_t scan_from_ = 0;   // SharedLoad::Claim's cursor into this source's chunks
  std::shared_ptr<transfer::Transport> transport_;
  const std::string source_;
  ControlChannel control_;
  std::optional<Heartbeats> beats_;  // from Accept until Done
  uint64_t received_ = 0;            // bytes received from this source and verified
  uint64_t session_ = 0;
  int64_t failed_chunk_ = -1;
  bool done_sent_ = false;
  double register_seconds_ = 0;
};

// What `patterns` add to a Register: each one's bytes and its field's framing (at most 4).
size_t RegisterBytes(const std::vector<std::string>& patterns) {
  size_t bytes = 0;
  for (const std::string& pattern : patterns) bytes += pattern.size() + 4;
  return bytes;
}

// The relay must serve exactly the destination's memory, and the whole of it.
Status CheckRelay(internal::RelayFeed* relay, const ClientOptions& options,
                  const ModelView& destination) {
  if (relay == nullptr) {
    return Status(StatusCode::kInvalidArgument,
                  "ClientOptions::relay was not started with Server::StartRelay");
  }
  if (!options.tensors.empty()) {
    return Status(StatusCode::kInvalidArgument,
                  "ClientOptions::relay serves the whole model; it cannot go with `tensors`");
  }
  const ModelView& served = relay->relayed_model();
  bool same = served.tensors.size() == destination.tensors.size();
  for (size_t i = 0; same && i < served.tensors.size(); ++i) {
    same = served.tensors[i].data == destination.tensors[i].data &&
           served.tensors[i].size_bytes == destination.tensors[i].size_bytes &&
           served.tensors[i].name == destination.tensors[i].name;
  }
  if (!same) {
    return Status(StatusCode::kInvalidArgument,
                  "ClientOptions::relay serves other tensors than the destination being loaded "
                  "(start it over the same ModelView)");
  }
  return Status::Ok();
}

Status ValidateOptions(const ClientOptions& options) {
  if (options.sources.empty()) return Status(StatusCode::kInvalidArgument, "no sources given");
  for (const std::string& s : options.sources) {
    if (s.empty()) return Status(StatusCode::kInvalidArgument, "a source endpoint is empty");
  }
  if (options.window < 1) return Status(StatusCode::kInvalidArgument, "window must be >= 1");
  if (options.stripe < 1) return Status(StatusCode::kInvalidArgument, "stripe must be >= 1");
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
  const size_t pattern_bytes = RegisterBytes(options.tensors);
  if (pattern_bytes > kMaxTensorPatternBytes) {
    return Status(StatusCode::kInvalidArgument,
                  "ClientOptions::tensors: " + std::to_string(options.tensors.size()) +
                      " patterns take " + std::to_string(pattern_bytes) +
                      " bytes, more than one Register carries (" +
                      std::to_string(kMaxTensorPatternBytes) +
                      "); select with wildcards instead of listing names");
  }
  return ValidatePartition(options.partition);
}

}  // namespace

namespace internal {

Result<LoadStats> Load(const ClientOptions& options, const ModelView& whole_destination,
                       transfer::DataPlane& plane, ReceiveOptions receiving) {
  Status status = ValidateOptions(options);
  if (status.ok()) status = ValidateModelView(whole_destination);
  if (!status.ok()) return status;
  // A partial load fills only the selected tensors, streamed in name order.
  Result<ModelView> selected = ModelView{};
  if (!options.tensors.empty()) {
    selected = SelectTensors(whole_destination, options.tensors);
    if (!selected.ok()) return selected.status().WithContext("ClientOptions::tensors");
  }
  const ModelView& destination = options.tensors.empty() ? whole_destination : *selected;
  const Fingerprint fingerprint = MakeFingerprint(destination, options.model_id, options.partition);
  // The selection goes out as its exact names, so that a source holding more tensors that match
  // the patterns (a whole model, for a pipeline stage) still serves; names too many for one
  // Register go out as the patterns themselves, which must then select the same on the source.
  std::vector<std::string> patterns;
  if (!options.tensors.empty()) {
    for (const TensorView& t : destination.tensors) patterns.push_back(ExactTensorPattern(t.name));
    if (RegisterBytes(patterns) > kMaxTensorPatternBytes) patterns = options.tensors;
  }
  internal::RelayFeed* relay = nullptr;
  if (options.relay != nullptr) {
    relay = internal::RelayFeedOf(*options.relay);
    status = CheckRelay(relay, options, whole_destination);
    if (!status.ok()) return status;
  }
  const auto start = Clock::now();
  EarlyStart early(plane, options.transport);
  SharedLoad shared(options, destination.total_bytes(), relay);
  // Up to `stripe` sources at once, each on a thread of its own; one that fails is replaced by
  // the next untried source, which takes over what is left. A redirect puts its relays next,
  // then the source that redirected again.
  std::mutex mu;  // guards the seven below
  std::vector<std::string> sources = options.sources;
  int redirects = 0;
  size_t next_source = 0;
  std::vector<std::pair<size_t, SourceAttempt>> attempts;
  std::optional<LoadStats> delivered;
  std::string failures;
  std::vector<FieldDiff> diffs;  // every refusal's, each once
  StatusCode last = StatusCode::kUnavailable;
  auto run_sources = [&] {
    while (true) {
      size_t index;
      std::string source;
      int followed;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (next_source == sources.size() || delivered || IsCancelled(options.cancel)) return;
        index = next_source++;
        source = sources[index];
        followed = redirects;
      }
      Log().debug("loading {} tensors ({} bytes, {} verified already) from {}",
                  destination.tensors.size(), destination.total_bytes(), shared.verified_bytes(),
                  source);
      Attempt attempt(options, destination, fingerprint, patterns, plane, early, shared, source,
                      followed, receiving);
      Result<LoadStats> result = attempt.Run();
      std::lock_guard<std::mutex> lock(mu);
      attempts.push_back(
          {index,
           {source, result.ok() ? Status::Ok() : result.status(), attempt.verified_bytes()}});
      if (result.ok()) {
        delivered = std::move(*result);
        return;
      }
      if (IsCancelled(options.cancel)) return;
      if (!attempt.redirect().empty() && redirects < kMaxRedirects) {
        Log().info("{}: {}", source, result.status().message());
        // The relays, then the redirecting source again; each once among those still to try.
        std::vector<std::string> next;
        for (const std::string& to : attempt.redirect()) next.push_back(to);
        next.push_back(source);
        const auto untried = sources.begin() + static_cast<std::ptrdiff_t>(next_source);
        std::vector<std::string> fresh;
        for (const std::string& to : next) {
          if (std::find(untried, sources.end(), to) == sources.end() &&
              std::find(fresh.begin(), fresh.end(), to) == fresh.end()) {
            fresh.push_back(to);
          }
        }
        sources.insert(untried, fresh.begin(), fresh.end());
        ++redirects;
        continue;
      }
      Log().warn("source {} failed: {}", source, result.status().ToString());
      failures += (failures.empty() ? "" : "; ") + source + ": " + result.status().ToString();
      last = result.status().code();
      for (const FieldDiff& d : result.status().diffs()) {
        if (std::find(diffs.begin(), diffs.end(), d) == diffs.end()) diffs.push_back(d);
      }
    }
  };
  std::vector<std::thread> striped;
  for (int i = 1; i < std::min<int>(options.stripe, static_cast<int>(options.sources.size()));
       ++i) {
    striped.emplace_back(run_sources);
  }
  run_sources();
  for (std::thread& t : striped) t.join();
  if (!delivered && IsCancelled(options.cancel)) {
    status = CancelledStatus();
    if (!failures.empty()) {
      status = Status(status.code(), status.message() + " (" + failures + ")", diffs);
    }
  } else if (!delivered) {
    status = Status(last, "no source delivered the model (" + failures + ")", diffs);
  }
  if (!delivered) {
    shared.Ended(status);
    return status;
  }
  shared.Ended(Status::Ok());

  LoadStats stats = std::move(*delivered);
  std::sort(attempts.begin(), attempts.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [index, attempt] : attempts) stats.attempts.push_back(std::move(attempt));
  stats.bytes_received = shared.received_bytes();
  stats.bytes_reused = shared.reused_bytes();
  stats.seconds = SecondsSince(start);
  stats.gbps = stats.bytes / stats.seconds / 1e9;
  std::string delivered_by;
  for (const SourceAttempt& a : stats.attempts) {
    if (a.bytes > 0) delivered_by += (delivered_by.empty() ? "" : ", ") + a.source;
  }
  Log().info(
      "loaded {} tensors, {} bytes from {} in {:.3f} s (the last transfer {:.3f} s at {:.2f} "
      "GB/s), every chunk verified",
      stats.tensors, stats.bytes, delivered_by.empty() ? stats.source : delivered_by, stats.seconds,
      stats.transfer_seconds, stats.transfer_gbps);
  return stats;
}

}  // namespace internal

Status VerifyModel(const ModelView& model, const LoadStats& stats) {
  if (stats.tensor_names.size() != stats.tensor_digests.size()) {
    return Status(StatusCode::kInvalidArgument,
                  "the stats list " + std::to_string(stats.tensor_names.size()) +
                      " tensor names for " + std::to_string(stats.tensor_digests.size()) +
                      " digests (not a LoadStats from Load)");
  }
  std::unordered_map<std::string_view, const TensorView*> by_name;
  for (const TensorView& t : model.tensors) by_name.emplace(t.name, &t);
  std::string differing;
  size_t count = 0;
  for (size_t i = 0; i < stats.tensor_names.size(); ++i) {
    auto found = by_name.find(stats.tensor_names[i]);
    if (found == by_name.end()) {
      return Status(
          StatusCode::kInvalidArgument,
          "the model lacks tensor '" + stats.tensor_names[i] + "', which the load filled");
    }
    const TensorView& t = *found->second;
    if (XXH3_64bits(t.data, t.size_bytes) == stats.tensor_digests[i]) continue;
    if (++count <= 5) differing += (differing.empty() ? "" : ", ") + t.name;
  }
  if (count == 0) return Status::Ok();
  if (count > 5) differing += " and " + std::to_string(count - 5) + " more";
  return Status(StatusCode::kChecksumMismatch,
                std::to_string(count) + " tensors differ from the source's digests: " + differing);
}

Result<SourceStatus> QueryStatus(const std::string& endpoint, const std::string& secret,
                                 std::chrono::milliseconds timeout) {
  Status valid = ValidateSecret(secret);
  if (!valid.ok()) return valid.WithContext("QueryStatus secret");
  ControlChannel control(endpoint, secret);
  Status status = control.Connect();
  wire::Envelope request;
  request.mutable_status_request();
  if (status.ok()) status = control.Send(request);
  if (!status.ok()) return status.WithContext(endpoint);
  Result<wire::Envelope> reply = control.Receive(timeout);
  if (!reply.ok()) return reply.status().WithContext(endpoint);
  if (reply->has_reject()) {
    return Status(FromRejectCode(reply->reject().code()),
                  endpoint + " refused: " + reply->reject().reason());
  }
  if (!reply->has_status()) {
    return Status(StatusCode::kProtocolMismatch,
                  endpoint + " answered StatusRequest with " + BodyName(*reply));
  }
  const wire::ServerStatus& in = reply->status();
  SourceStatus out;
  switch (in.state()) {
    case wire::ServerStatus::WAITING:
      out.state = "waiting";
      break;
    case wire::ServerStatus::LOADING:
      out.state = "loading";
      break;
    case wire::ServerStatus::SERVING:
      out.state = "serving";
      break;
    case wire::ServerStatus::FAILED:
      out.state = "failed";
      break;
    default:
      out.state = "unknown";
  }
  out.failure = in.failure();
  wire::Fingerprint fingerprint;
  fingerprint.set_model_id(in.model_id());
  fingerprint.set_table_digest(in.table_digest());
  *fingerprint.mutable_partition() = in.partition();
  const Fingerprint decoded = FromWire(fingerprint);
  out.model_id = decoded.model_id;
  out.partition = decoded.partition;
  out.table_digest = decoded.table_digest;
  out.bytes_total = in.bytes_total();
  out.bytes_held = in.bytes_held();
  out.sessions = static_cast<int>(in.sessions());
  out.max_sessions = static_cast<int>(in.max_sessions());
  out.fanout = static_cast<int>(in.fanout());
  out.children.assign(in.children().begin(), in.children().end());
  out.bytes_sent = in.bytes_sent();
  out.clients_served = in.clients_served();
  out.clients_failed = in.clients_failed();
  out.redirected = in.redirected();
  return out;
}

Result<LoadStats> Load(const ClientOptions& options, const ModelView& destination) {
  return internal::Load(options, destination, *transfer::MakeMpiDataPlane(options.transport));
}

}  // namespace netloader
