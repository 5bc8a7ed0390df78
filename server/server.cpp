#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <zmq.hpp>

#include "netloader/fingerprint.h"
#include "netloader/limits.h"
#include "netloader/src/base/log.h"
#include "netloader/src/control/auth.h"
#include "netloader/src/model/selection.h"
#include "netloader/src/protocol/registration.h"
#include "netloader/src/protocol/wire.h"
#include "netloader/src/stream/manifest.h"
#include "netloader/src/stream/relay_feed.h"
#include "server/server_internal.h"
#include "transfer/mpi/transport.h"

namespace netloader {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

// What a session streams: the whole model, or the tensors a partial load selected (in name
// order), cut into chunks once, with the manifest part of its Accept serialized once. Protobuf
// merges concatenated serializations of a message (nested messages field by field), so each
// Accept is these bytes followed by the small per-client part: no per-client copy.
struct Stream {
  Stream(ModelView tensors, uint64_t chunk_bytes, const Manifest& manifest)
      : view(std::move(tensors)), plan(view, chunk_bytes) {
    wire::Envelope manifest_part;
    ToWire(manifest, manifest_part.mutable_accept()->mutable_manifest());
    accept_manifest_bytes = Encode(manifest_part);
  }
  const ModelView view;
  const SendPlan plan;
  std::string accept_manifest_bytes;  // Envelope{accept{manifest}}
};

// The streams of recent partial loads, by the tensors selected: the clients of one pipeline
// stage or expert group ask for the same tensors, and a stream's digests cost a pass over the
// chunks that coalesce small tensors.
constexpr size_t kCachedSelections = 8;

// One admitted client: its MPI listener, its streaming thread, and the Request and Done mailbox
// the control thread fills.
struct Session {
  uint64_t id = 0;
  std::string client;
  std::shared_ptr<const Stream> stream;
  // Where the client serves while it loads (Register.serve_endpoint): a relay newcomers may be
  // redirected to; empty when it does not serve.
  std::string serve_endpoint;
  uint64_t generation = 0;  // a relay's content generation the session streams (ServerImpl)
  std::unique_ptr<transfer::Listener> listener;
  std::thread thread;
  std::atomic<bool> abort{false};     // set by Stop(), an early Done, or missed heartbeats
  std::atomic<bool> finished{false};  // the thread is about to exit; join and free the slot
  // The outcome, written by the session's thread before `finished`, read after joining it.
  bool served = false;
  uint64_t bytes_sent = 0;
  std::atomic<int64_t> last_heard_ms{NowMs()};  // the client's last heartbeat (or Register)
  std::mutex mu;                                // guards requests, done and lost
  std::condition_variable cv;
  std::deque<std::vector<size_t>> requests;  // the chunks of each Request not yet streamed
  std::optional<wire::Done> done;
  std::string lost;  // why the control thread gave up on the client
};

class ServerImpl : public Server, public internal::RelayFeed {
 public:
  // Without `manifest`, a relay (Server::StartRelay): nothing is served until its own load adopts
  // a source's manifest.
  ServerImpl(ServerOptions options, ModelView model, std::shared_ptr<transfer::Transport> transport,
             std::optional<Manifest> manifest)
      : options_(std::move(options)),
        model_(std::move(model)),
        transport_(std::move(transport)),
        relay_(!manifest.has_value()),
        registrar_(MakeFingerprint(model_, options_.model_id, options_.partition),
                   transport_->rendezvous(), options_.max_concurrent_transfers) {
    if (manifest) Install(std::move(*manifest));
  }

  ~ServerImpl() override { Stop(); }

  Status Bind() {
    try {
      socket_ = zmq::socket_t(context_, zmq::socket_type::router);
      socket_.set(zmq::sockopt::linger, 0);
      // Past this zmq drops the connection itself; below it oversized messages get a Reject.
      socket_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kServerCutoffBytes));
      socket_.set(zmq::sockopt::router_mandatory, 1);
      // With a secret the socket is a CURVE server and ZAP checks each client's key; without
      // one, the monitor still reports clients that try to authenticate.
      if (!options_.secret.empty()) {
        zap_.emplace(context_, options_.secret);
        MakeCurveServer(socket_, options_.secret);
      }
      monitor_.emplace(context_, socket_, "server");
      std::string endpoint = options_.listen;
      if (endpoint.size() > 2 && endpoint.compare(endpoint.size() - 2, 2, ":0") == 0) {
        endpoint.replace(endpoint.size() - 1, 1, "*");
      }
      socket_.bind(endpoint);
      endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
    } catch (const zmq::error_t& e) {
      return Status(StatusCode::kUnavailable, "cannot bind '" + options_.listen + "': " + e.what());
    }
    return Status::Ok();
  }

  void StartThread() {
    control_ = std::thread([this] { ControlLoop(); });
  }

  std::string endpoint() const override { return endpoint_; }
  std::string rendezvous_uri() const override { return transport_->rendezvous(); }

  ServerStats stats() const override {
    std::lock_guard<std::mutex> lock(stats_mu_);
    return stats_;
  }

  void Stop() override {
    stopping_ = true;
    std::lock_guard<std::mutex> lock(stop_mu_);
    if (control_.joinable()) control_.join();
  }

  Status MarkLoaded() override {
    if (!relay_) return Status::Ok();  // a server started over loaded weights holds them all
    uint64_t chunk_bytes = options_.chunk_bytes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (complete_) return Status::Ok();
      if (whole_) chunk_bytes = manifest_.chunk_bytes;  // keep the stream the clients know
    }
    const auto start = Clock::now();
    Manifest manifest = BuildManifest(model_, chunk_bytes);
    Log().info(
        "relay at {}: the host loaded the weights itself; digests computed in {:.3f} s, "
        "serving all of them",
        endpoint_, SecondsSince(start));
    std::lock_guard<std::mutex> lock(mu_);
    if (!whole_ || manifest.chunk_digests != manifest_.chunk_digests) Install(std::move(manifest));
    complete_ = true;
    load_failure_.clear();
    held_cv_.notify_all();
    return Status::Ok();
  }

  // internal::RelayFeed, for a Load filling this relay's model (ClientOptions::relay).
  Status Adopt(const Manifest& manifest) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (complete_) return Status::Ok();
    if (whole_ && manifest.tensor_digests == manifest_.tensor_digests) return Status::Ok();
    if (manifest.table_digest != table_digest_) {
      return Status(StatusCode::kFingerprintMismatch,
                    "the relay serves another tensor table than the one being loaded");
    }
    auto stream = std::make_shared<const Stream>(model_, manifest.chunk_bytes, manifest);
    if (stream->plan.size() != manifest.chunk_digests.size()) {
      return Status(StatusCode::kInternal, "the relay's chunk plan differs from its source's");
    }
    if (whole_) {
      Log().warn("relay at {}: its load now takes other weights; dropping {} bytes held", endpoint_,
                 held_.bytes());
    }
    Install(manifest, std::move(stream));
    return Status::Ok();
  }
  void Held(uint64_t begin, uint64_t end) override {
    std::lock_guard<std::mutex> lock(mu_);
    held_.Add(begin, end);
    held_cv_.notify_all();
  }
  void LoadEnded(const Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (complete_) return;
    if (status.ok() && whole_ && held_.bytes() == model_.total_bytes()) {
      complete_ = true;
      Log().info("relay at {}: loaded and verified; serving as a source", endpoint_);
    } else {
      load_failure_ = status.ok() ? "it ended without every byte" : status.ToString();
      Log().warn(
          "relay at {}: its own load failed; refusing clients until the host loads the "
          "weights otherwise (MarkLoaded): {}",
          endpoint_, load_failure_);
    }
    held_cv_.notify_all();
  }
  const ModelView& relayed_model() const override { return model_; }
  bool relaying() const override { return relay_; }

 private:
  // Serves `manifest` over model_ from now on: a new content generation, whose sessions are the
  // only ones that may go on streaming. Caller holds mu_ (or is the constructor).
  void Install(Manifest manifest, std::shared_ptr<const Stream> stream = nullptr) {
    if (!stream) stream = std::make_shared<const Stream>(model_, manifest.chunk_bytes, manifest);
    manifest_ = std::move(manifest);
    whole_ = std::move(stream);
    selections_.clear();
    held_.Clear();
    ++generation_;
    held_cv_.notify_all();
  }

  // Before chunk `c` of a session's stream is posted: on a relay, waits until its own load has
  // verified the chunk's bytes (within the stall timeout). Not called for a server over loaded
  // weights.
  Status WaitHeld(const Session& session, size_t c) {
    const auto [begin, end] = session.stream->plan.range(c);
    const auto deadline = Clock::now() + options_.stall_timeout;
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (generation_ != session.generation) {
        return Status(StatusCode::kUnavailable,
                      "this relay's own load switched to other weights; ask another source");
      }
      if (complete_ || held_.Covers(begin, end)) return Status::Ok();
      if (!load_failure_.empty()) {
        return Status(StatusCode::kUnavailable, "this relay's own load failed: " + load_failure_);
      }
      if (session.abort.load()) {
        return Status(StatusCode::kCancelled, "stream cancelled at chunk " + std::to_string(c));
      }
      if (Clock::now() >= deadline) {
        return Status(StatusCode::kTimeout, "chunk " + std::to_string(c) +
                                                " was not verified here within " +
                                                std::to_string(options_.stall_timeout.count()) +
                                                " ms (this relay's own load is stalled)");
      }
      held_cv_.wait_for(lock, std::chrono::milliseconds(50));
    }
  }

  void ControlLoop() {
    Log().info("{} {} tensors ({} bytes) at {} (rendezvous {}), up to {} clients at once, {}",
               relay_ ? "relaying, while they load," : "serving", model_.tensors.size(),
               model_.total_bytes(), endpoint_, transport_->rendezvous(),
               options_.max_concurrent_transfers,
               zap_ ? "shared secret required" : "without authentication");
    while (!stopping_.load()) {
      zmq::pollitem_t items[] = {
          {static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0},
          {static_cast<void*>(monitor_->socket()), 0, ZMQ_POLLIN, 0},
          {zap_ ? static_cast<void*>(zap_->socket()) : nullptr, 0, ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, zap_ ? 3 : 2, std::chrono::milliseconds(100));
        if (items[1].revents & ZMQ_POLLIN) LogFailedHandshakes();
        if (zap_ && (items[2].revents & ZMQ_POLLIN)) CheckClientKeys();
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        Log().error("polling {} failed: {}", endpoint_, e.what());
        break;
      }
      ReapFinishedSessions();
      DropSilentSessions();
      // Bounded per wake-up so reaping and Stop() stay responsive under a flood.
      for (int i = 0; i < 64 && (items[0].revents & ZMQ_POLLIN); ++i) {
        if (!ReceiveOne()) break;
      }
    }
    for (auto& [id, session] : sessions_) {
      std::lock_guard<std::mutex> lock(session->mu);
      session->abort = true;
      session->cv.notify_all();
    }
    for (auto it = sessions_.begin(); it != sessions_.end();) it = Retire(it);
    monitor_.reset();
    zap_.reset();
    socket_.close();
    Log().info("server at {} stopped", endpoint_);
  }

  void LogFailedHandshakes() {
    while (std::optional<SocketMonitor::Event> event = monitor_->Read()) {
      Log().warn("a client failed the connection handshake: {}",
                 DescribeHandshakeFailure(*event, zap_.has_value()));
      Count([](ServerStats& s) { s.unauthenticated++; });
    }
  }

  void CheckClientKeys() {
    for (int i = 0; i < 64; ++i) {
      std::optional<std::string> refused;
      if (!zap_->AnswerOne(&refused)) break;
      if (refused)
        Log().warn("refused a client at {}: it does not hold the shared secret", *refused);
    }
  }

  // A client that stopped sending heartbeats died or froze: abort its transfer, free its slot.
  void DropSilentSessions() {
    if (options_.heartbeat_timeout.count() <= 0) return;
    const int64_t now = NowMs();
    for (auto& [id, session] : sessions_) {
      const int64_t silent = now - session->last_heard_ms.load();
      if (session->finished.load() || session->abort.load() ||
          silent <= options_.heartbeat_timeout.count()) {
        continue;
      }
      std::lock_guard<std::mutex> lock(session->mu);
      session->lost = "no heartbeat from the client for " + std::to_string(silent) + " ms";
      session->abort = true;
      session->cv.notify_all();
    }
  }

  // Reads and handles one message; false when none is waiting.
  bool ReceiveOne() {
    std::vector<zmq::message_t> frames;
    try {
      zmq::message_t frame;
      if (!socket_.recv(frame, zmq::recv_flags::dontwait)) return false;
      frames.push_back(std::move(frame));
      while (frames.back().more()) {
        zmq::message_t next;
        (void)socket_.recv(next, zmq::recv_flags::none);
        frames.push_back(std::move(next));
      }
    } catch (const zmq::error_t& e) {
      Log().warn("receive on {} failed: {}", endpoint_, e.what());
      return false;
    }
    const std::string identity = frames[0].to_string();
    if (frames.size() != 2) {
      RejectFraming(frames);
      return true;
    }
    Result<wire::Envelope> envelope =
        Decode(frames[1].data(), frames[1].size(), kMaxServerMessageBytes);
    if (!envelope.ok()) {
      Log().warn("refused a malformed request: {}", envelope.status().ToString());
      SendReject(identity, envelope.status().code(), envelope.status().message());
      return true;
    }
    switch (envelope->body_case()) {
      case wire::Envelope::kRegister:
        HandleRegister(identity, envelope->register_());
        break;
      case wire::Envelope::kHeartbeat:
        HandleHeartbeat(identity, envelope->heartbeat());
        break;
      case wire::Envelope::kRequest:
        HandleRequest(identity, envelope->request());
        break;
      case wire::Envelope::kDone:
        HandleDone(envelope->done());
        break;
      case wire::Envelope::kStatusRequest:
        HandleStatus(identity);
        break;
      default:
        Log().warn("refused an unexpected {} message", BodyName(*envelope));
        SendReject(identity, StatusCode::kInvalidArgument,
                   std::string("servers take Register, Request, Heartbeat, Done and "
                               "StatusRequest; this was ") +
                       BodyName(*envelope));
    }
    return true;
  }

  // A message of other than one frame (frames[0] is ZeroMQ's routing id). A REQ socket puts an
  // empty delimiter frame first; the reply carries one too, so that a REQ socket receives it.
  void RejectFraming(const std::vector<zmq::message_t>& frames) {
    const size_t parts = frames.size() - 1;
    const bool req = parts == 2 && frames[1].size() == 0;
    const std::string reason =
        "netloader messages are one frame holding one Envelope (send "
        "from a DEALER socket); this one had " +
        std::to_string(parts) + " frames" + (req ? ", as a REQ socket sends them" : "");
    Log().warn("refused a request: {}", reason);
    wire::Envelope reply;
    reply.mutable_reject()->set_code(wire::PROTOCOL_MISMATCH);
    reply.mutable_reject()->set_reason(reason);
    Send(frames[0].to_string(), reply, "", req);
  }

  void HandleRegister(const std::string& identity, const wire::Register& request) {
    const std::string client = request.client_name().empty() ? "?" : request.client_name();
    Status valid = ValidateRegister(request);
    if (!valid.ok()) {
      Log().warn("refused client {}: {}", client, valid.message());
      Count([](ServerStats& s) { s.refused++; });
      SendReject(identity, valid.code(), valid.message());
      return;
    }
    RegisterRequest decoded{FromWire(request.fingerprint()), request.rendezvous_uri(), {}};
    // A partial load: the tensors its patterns select here, which must be those it selected.
    std::vector<size_t> selected;
    ModelView selection;
    if (request.tensors_size() > 0) {
      selected = MatchTensors(model_, {request.tensors().begin(), request.tensors().end()});
      for (size_t i : selected) selection.tensors.push_back(model_.tensors[i]);
      decoded.selected_table_digest = TableDigest(selection);
    }
    Admission admission = registrar_.Decide(decoded, [this] { return transport_->health(); });
    if (admission.kind == Admission::Kind::kReject) {
      Log().warn("refused client {}: {}", client, admission.reason);
      Count([](ServerStats& s) { s.refused++; });
      // Another table: send ours, so that the client can name the tensors that differ.
      const bool other_table =
          std::any_of(admission.diffs.begin(), admission.diffs.end(),
                      [](const FieldDiff& d) { return d.field == "table_digest"; });
      SendReject(identity, admission.code, admission.reason, admission.diffs,
                 other_table ? (decoded.selected_table_digest ? &selection : &model_) : nullptr);
      return;
    }
    const bool partial = decoded.selected_table_digest.has_value();
    std::shared_ptr<const Stream> whole;
    uint64_t generation = 0;
    bool complete = false;
    std::string failure;
    {
      std::lock_guard<std::mutex> lock(mu_);
      whole = whole_;
      generation = generation_;
      complete = complete_;
      failure = load_failure_;
    }
    if (!complete && !failure.empty()) {
      Log().warn("refused client {}: this relay's own load failed", client);
      Count([](ServerStats& s) { s.refused++; });
      SendReject(
          identity, StatusCode::kUnavailable,
          "this instance is loading and its own load failed (" + failure + "); ask another source");
      return;
    }
    if (!complete && (!whole || partial)) {
      // A relay learns its stream from its source's Accept, moments after it started loading.
      SendBusy(identity, client,
               whole ? "partial loads are served once this instance's own load is complete"
                     : "this instance is loading and has not heard from its source yet",
               whole ? options_.busy_retry_hint
                     : std::min(options_.busy_retry_hint, std::chrono::milliseconds(100)));
      return;
    }
    // At the fan-out limit, newcomers go to the relays loading from here (PROTOCOL.md 4.2.2).
    if (!partial && options_.fanout > 0 && registrar_.active() >= options_.fanout &&
        request.redirects() < static_cast<uint32_t>(kMaxRedirects)) {
      std::vector<std::string> relays = RelaysFor(request.serve_endpoint());
      if (!relays.empty()) {
        Log().info("client {} redirected to {} (fan-out limit {} reached)", client, relays[0],
                   options_.fanout);
        Count([](ServerStats& s) { s.redirected++; });
        wire::Envelope reply;
        for (const std::string& relay : relays) reply.mutable_redirect()->add_sources(relay);
        Send(identity, reply);
        return;
      }
    }
    if (admission.kind == Admission::Kind::kBusy) {
      SendBusy(identity, client, admission.reason, options_.busy_retry_hint);
      return;
    }
    Result<std::unique_ptr<transfer::Listener>> listener = transport_->Listen();
    if (!listener.ok()) {
      Log().error("cannot open an MPI port for client {}: {}", client,
                  listener.status().ToString());
      SendReject(identity, StatusCode::kUnavailable,
                 "server cannot open an MPI port: " + listener.status().message());
      return;
    }
    auto session = std::make_unique<Session>();
    session->id = registrar_.Open();
    session->client = client;
    session->listener = std::move(*listener);
    session->stream = partial ? Selected(selected, std::move(selection)) : whole;
    session->generation = generation;
    session->serve_endpoint = request.serve_endpoint();

    wire::Envelope reply;
    wire::Accept* accept = reply.mutable_accept();
    accept->set_session_id(session->id);
    accept->set_mpi_port(session->listener->address());
    accept->set_rendezvous_uri(transport_->rendezvous());
    if (!Send(identity, reply, session->stream->accept_manifest_bytes)) {
      registrar_.Close(session->id);
      return;
    }
    Log().info("client {} registered as session {:016x}{}; {} of {} slots in use", client,
               session->id,
               decoded.selected_table_digest
                   ? fmt::format(" for {} of the {} tensors", session->stream->view.tensors.size(),
                                 model_.tensors.size())
                   : "",
               registrar_.active(), registrar_.limit());
    Session* raw = session.get();
    session->thread = std::thread([this, raw] { Serve(*raw); });
    sessions_[raw->id] = std::move(session);
    CountSessions();
  }

  void SendBusy(const std::string& identity, const std::string& client, const std::string& reason,
                std::chrono::milliseconds retry) {
    Log().info("client {} told to retry: {}", client, reason);
    Count([](ServerStats& s) { s.busy++; });
    wire::Envelope reply;
    wire::Busy* busy = reply.mutable_busy();
    busy->set_retry_after_ms(static_cast<uint32_t>(retry.count()));
    busy->set_active(static_cast<uint32_t>(registrar_.active()));
    busy->set_limit(static_cast<uint32_t>(registrar_.limit()));
    Send(identity, reply);
  }

  // The endpoints where the clients streaming from here serve while they load (its children in
  // the tree): what StatusRequest reports and redirects choose from.
  std::vector<std::string> Children() const {
    std::vector<std::string> children;
    for (const auto& [id, session] : sessions_) {
      if (session->serve_endpoint.empty() || session->abort.load() || session->finished.load())
        continue;
      children.push_back(session->serve_endpoint);
    }
    return children;
  }

  // The children other than `newcomer`: the one sent the fewest newcomers first, which is
  // counted as sent this one.
  std::vector<std::string> RelaysFor(const std::string& newcomer) {
    std::vector<std::pair<uint64_t, std::string>> relays;
    for (const std::string& relay : Children()) {
      if (relay != newcomer) relays.emplace_back(redirected_[relay], relay);
    }
    std::stable_sort(relays.begin(), relays.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<std::string> endpoints;
    for (auto& [count, relay] : relays) endpoints.push_back(std::move(relay));
    if (!endpoints.empty()) ++redirected_[endpoints[0]];
    return endpoints;
  }

  // The stream of a partial load's selected tensors (indices into model_, in stream order).
  std::shared_ptr<const Stream> Selected(const std::vector<size_t>& selected, ModelView view) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = selections_.begin(); it != selections_.end(); ++it) {
      if (it->first != selected) continue;
      selections_.splice(selections_.begin(), selections_, it);  // most recently used first
      return it->second;
    }
    const auto start = Clock::now();
    auto stream = std::make_shared<const Stream>(std::move(view), options_.chunk_bytes,
                                                 SubsetManifest(model_, manifest_, selected));
    Log().debug("stream of {} selected tensors ({} chunks) made in {:.3f} s",
                stream->view.tensors.size(), stream->plan.size(), SecondsSince(start));
    selections_.emplace_front(selected, stream);
    if (selections_.size() > kCachedSelections) selections_.pop_back();
    return stream;
  }

  // The session a Heartbeat or Request names, which the client is heard from; nullptr, after a
  // Reject to the sender, when it is not active.
  Session* ActiveSession(const std::string& identity, uint64_t id) {
    auto it = sessions_.find(id);
    if (it == sessions_.end() || it->second->abort.load()) {
      SendReject(identity, StatusCode::kInvalidArgument,
                 "session " + Hex(id) + " is not active on this server");
      return nullptr;
    }
    it->second->last_heard_ms = NowMs();
    return it->second.get();
  }

  void HandleHeartbeat(const std::string& identity, const wire::Heartbeat& beat) {
    Session* session = ActiveSession(identity, beat.session_id());
    if (session == nullptr) return;
    wire::Envelope reply;
    reply.mutable_heartbeat()->set_session_id(session->id);
    Send(identity, reply);
  }

  void HandleRequest(const std::string& identity, const wire::Request& request) {
    Session* active = ActiveSession(identity, request.session_id());
    if (active == nullptr) return;
    Session& session = *active;
    Result<std::vector<size_t>> chunks = FromWire(request, session.stream->plan.size());
    std::lock_guard<std::mutex> lock(session.mu);
    if (!chunks.ok()) {
      // The session cannot go on: the client and this server no longer agree on the stream.
      Log().warn("client {} sent a bad Request: {}", session.client, chunks.status().message());
      session.lost = "it sent a bad Request: " + chunks.status().message();
      session.abort = true;
      session.cv.notify_all();
      SendReject(identity, StatusCode::kInvalidArgument, chunks.status().message());
      return;
    }
    session.requests.push_back(std::move(*chunks));
    session.cv.notify_all();
  }

  // What this server is doing (PROTOCOL.md, section 4.7).
  void HandleStatus(const std::string& identity) {
    wire::Envelope reply;
    wire::ServerStatus* status = reply.mutable_status();
    {
      std::lock_guard<std::mutex> lock(mu_);
      status->set_state(complete_                ? wire::ServerStatus::SERVING
                        : !load_failure_.empty() ? wire::ServerStatus::FAILED
                        : whole_                 ? wire::ServerStatus::LOADING
                                                 : wire::ServerStatus::WAITING);
      status->set_bytes_held(complete_ ? model_.total_bytes() : held_.bytes());
      status->set_failure(load_failure_);
    }
    wire::Fingerprint fingerprint;
    ToWire(Fingerprint{kProtocolVersion, options_.model_id, table_digest_, options_.partition},
           &fingerprint);
    status->set_model_id(fingerprint.model_id());
    *status->mutable_partition() = fingerprint.partition();
    status->set_table_digest(table_digest_);
    status->set_bytes_total(model_.total_bytes());
    status->set_sessions(static_cast<uint32_t>(registrar_.active()));
    status->set_max_sessions(static_cast<uint32_t>(registrar_.limit()));
    status->set_fanout(static_cast<uint32_t>(options_.fanout));
    for (const std::string& child : Children()) status->add_children(child);
    const ServerStats counted = stats();
    status->set_bytes_sent(counted.bytes_sent);
    status->set_clients_served(counted.clients_served);
    status->set_clients_failed(counted.clients_failed);
    status->set_redirected(counted.redirected);
    Send(identity, reply);
  }

  void HandleDone(const wire::Done& done) {
    auto it = sessions_.find(done.session_id());
    if (it == sessions_.end()) {
      Log().warn("ignored a Done ({}) for session {:016x}, which is not active on this server",
                 done.verified() ? "verified" : "failed: " + done.message(), done.session_id());
      return;
    }
    Session& session = *it->second;
    std::lock_guard<std::mutex> lock(session.mu);
    session.done = done;
    // A client that gave up early must not leave us waiting on its connect or its receives.
    if (!done.verified()) session.abort = true;
    session.cv.notify_all();
  }

  // The session thread: accept the client's MPI connection, stream, await its verdict.
  void Serve(Session& session) {
    const std::string who = session.client + " (session " + Hex(session.id) + ")";
    Result<std::unique_ptr<transfer::Channel>> channel =
        session.listener->Accept(Clock::now() + options_.connect_timeout, &session.abort);
    if (!channel.ok()) {
      Log().warn("client {} did not connect over MPI: {}", who,
                 DescribeAbort(session, channel.status()));
      Finish(session, false, 0);
      return;
    }
    const auto start = Clock::now();
    uint64_t sent = 0;
    const SendPlan& plan = session.stream->plan;
    transfer::StreamOptions stream;
    stream.window = options_.window;
    stream.stall_timeout = options_.stall_timeout;
    stream.cancel = &session.abort;
    std::unique_ptr<StagingRing> ring;  // for chunks of several spans, if the stream has any
    if (plan.slot_bytes() > 0) {
      // No more slots than chunks can be in flight.
      Result<std::unique_ptr<StagingRing>> taken =
          TakeRing(std::min(static_cast<size_t>(options_.window), plan.size()), plan.slot_bytes());
      if (!taken.ok()) {
        Log().error("client {}: {}", who, taken.status().ToString());
        (*channel)->Abandon();
        Finish(session, false, 0);
        return;
      }
      ring = std::move(*taken);
    }
    // Stream each Request's chunks as it comes, until the client's Done (or its silence).
    Status status = Status::Ok();
    size_t requests = 0;
    std::unique_lock<std::mutex> lock(session.mu);
    while (true) {
      session.cv.wait_until(lock, Clock::now() + options_.done_timeout, [&] {
        return !session.requests.empty() || session.done.has_value() || session.abort.load();
      });
      if (session.requests.empty() || session.abort.load()) break;
      const std::vector<size_t> chunks = std::move(session.requests.front());
      session.requests.pop_front();
      lock.unlock();
      ++requests;
      status = plan.Send(
          **channel, stream, ring.get(), chunks, [&](size_t c) { sent += plan.bytes(c); },
          relay_ ? [&](size_t c) { return WaitHeld(session, c); }
                 : std::function<Status(size_t)>());
      lock.lock();
      if (!status.ok()) break;
    }
    std::optional<wire::Done> done = session.done;
    const bool aborted = session.abort.load();
    lock.unlock();
    const double seconds = SecondsSince(start);
    if (ring) ReturnRing(std::move(ring));
    if (!status.ok() || (aborted && !done)) {
      if (status.ok()) status = Status(StatusCode::kCancelled, "the session was aborted");
      Log().warn("transfer to {} failed after {} of {} bytes: {}", who, sent,
                 session.stream->view.total_bytes(), DescribeAbort(session, status));
      (*channel)->Abandon();
      Finish(session, false, sent);
      return;
    }
    if (done && done->verified()) {
      Log().info("served {}: {} bytes, {} tensors in {:.3f} s ({:.2f} GB/s), verified by client",
                 who, sent, session.stream->view.tensors.size(), seconds, sent / seconds / 1e9);
      Finish(session, true, sent);
      (*channel).reset();  // collective disconnect: the client does the same after Done
      return;
    }
    if (done) {
      Log().warn("client {} rejected the transfer at chunk {}: {}", who, done->failed_chunk(),
                 done->message());
    } else {
      Log().warn("client {} sent no {} within {} ms {}", who, requests ? "Done" : "Request",
                 options_.done_timeout.count(),
                 requests ? "after the last chunk it asked for" : "after it connected");
    }
    (*channel)->Abandon();
    Finish(session, false, sent);
  }

  // A ring of at least `slots` slots of at least `slot_bytes`: a free one, or a new one.
  Result<std::unique_ptr<StagingRing>> TakeRing(size_t slots, uint64_t slot_bytes) {
    {
      std::lock_guard<std::mutex> lock(rings_mu_);
      for (auto it = free_rings_.begin(); it != free_rings_.end(); ++it) {
        if ((*it)->slots() < slots || (*it)->slot_bytes() < slot_bytes) continue;
        std::unique_ptr<StagingRing> ring = std::move(*it);
        free_rings_.erase(it);
        return ring;
      }
    }
    auto ring = std::make_unique<StagingRing>();
    Status made = ring->Allocate(slots, slot_bytes);
    if (!made.ok()) return made;
    Count([&](ServerStats& s) { s.staging_bytes += ring->bytes(); });
    return ring;
  }

  void ReturnRing(std::unique_ptr<StagingRing> ring) {
    std::lock_guard<std::mutex> lock(rings_mu_);
    free_rings_.push_back(std::move(ring));
  }

  static std::string DescribeAbort(Session& session, const Status& status) {
    std::lock_guard<std::mutex> lock(session.mu);
    if (status.code() == StatusCode::kCancelled && session.done) {
      return "the client gave up: " + session.done->message();
    }
    if (status.code() == StatusCode::kCancelled && !session.lost.empty()) return session.lost;
    return status.ToString();
  }

  // The session thread's last act: its outcome, which the control thread counts when it reaps
  // the session.
  static void Finish(Session& session, bool served, uint64_t bytes) {
    session.served = served;
    session.bytes_sent = bytes;
    session.finished = true;
  }

  // ServerStats::active_transfers is the registrar's count of open sessions.
  void CountSessions() {
    Count([this](ServerStats& s) { s.active_transfers = registrar_.active(); });
  }

  // Joins a session's thread, frees its slot and counts its outcome, all in one update of the
  // stats, so that nobody sees a session counted as done and still open.
  std::map<uint64_t, std::unique_ptr<Session>>::iterator Retire(
      std::map<uint64_t, std::unique_ptr<Session>>::iterator it) {
    Session& session = *it->second;
    session.thread.join();
    registrar_.Close(session.id);
    redirected_.erase(session.serve_endpoint);
    Count([&](ServerStats& s) {
      (session.served ? s.clients_served : s.clients_failed)++;
      s.bytes_sent += session.bytes_sent;
      s.active_transfers = registrar_.active();
    });
    return sessions_.erase(it);
  }

  void ReapFinishedSessions() {
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      it = it->second->finished.load() ? Retire(it) : std::next(it);
    }
  }

  // With `table`, the Reject carries it (served_tensors).
  void SendReject(const std::string& identity, StatusCode code, const std::string& reason,
                  const std::vector<FieldDiff>& diffs = {}, const ModelView* table = nullptr) {
    wire::Envelope reply;
    wire::Reject* reject = reply.mutable_reject();
    reject->set_code(ToRejectCode(code));
    reject->set_reason(reason);
    for (const FieldDiff& d : diffs) {
      wire::FieldDiff* out = reject->add_diffs();
      out->set_field(d.field);
      out->set_server_value(d.server_value);
      out->set_client_value(d.client_value);
    }
    if (table != nullptr) ToWire(*table, reject);
    Send(identity, reply);
  }

  // Sends `prefix` (already serialized Envelope bytes, merged by the parser) followed by `reply`;
  // with `req_delimiter`, after an empty frame, as a REQ socket expects.
  bool Send(const std::string& identity, wire::Envelope& reply, const std::string& prefix = "",
            bool req_delimiter = false) {
    const std::string payload = prefix + Encode(reply);
    try {
      socket_.send(zmq::buffer(identity), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      if (req_delimiter) {
        socket_.send(zmq::str_buffer(""), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      }
      socket_.send(zmq::buffer(payload), zmq::send_flags::dontwait);
      return true;
    } catch (const zmq::error_t& e) {
      Log().warn("could not reply to a client: {}", e.what());
      return false;
    }
  }

  template <typename F>
  void Count(F update) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    update(stats_);
  }

  static std::string Hex(uint64_t id) {
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(id));
    return text;
  }

  const ServerOptions options_;
  const ModelView model_;
  const std::string table_digest_ = TableDigest(model_);
  std::shared_ptr<transfer::Transport> transport_;
  const bool relay_;  // started over a model still loading (Server::StartRelay)

  // What is served. A relay's change as its own load goes on (the loading thread, MarkLoaded).
  std::mutex mu_;  // guards the fields below
  std::condition_variable held_cv_;
  Manifest manifest_;                    // the whole model's digests
  std::shared_ptr<const Stream> whole_;  // the whole model in storage order; null until known
  // Recent partial loads' streams, most recently used first (served only once complete).
  std::list<std::pair<std::vector<size_t>, std::shared_ptr<const Stream>>> selections_;
  uint64_t generation_ = 0;   // bumped by every Install: other content, other sessions
  bool complete_ = !relay_;   // every byte held and verified
  ByteRanges held_;           // a relay's stream bytes its own load verified
  std::string load_failure_;  // why a relay's own load failed (until MarkLoaded)
  // Send rings (window slots of a stream's slot_bytes()), reused across sessions: allocating and
  // faulting them in is not free.
  std::mutex rings_mu_;  // guards free_rings_
  std::vector<std::unique_ptr<StagingRing>> free_rings_;

  // Owned by the control thread once it runs.
  Registrar registrar_;
  zmq::context_t context_{1};
  std::optional<ZapHandler> zap_;  // set when a secret is configured
  zmq::socket_t socket_;
  std::optional<SocketMonitor> monitor_;
  std::map<uint64_t, std::unique_ptr<Session>> sessions_;
  std::map<std::string, uint64_t> redirected_;  // a child relay's endpoint -> newcomers sent there
  std::string endpoint_;                        // written before the thread starts, read-only after

  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;  // guards joining control_ (Stop may be called from several threads)
  std::thread control_;
  mutable std::mutex stats_mu_;  // guards stats_
  ServerStats stats_;
};

Status ValidateOptions(const ServerOptions& options) {
  if (options.max_concurrent_transfers < 1) {
    return Status(StatusCode::kInvalidArgument, "max_concurrent_transfers must be >= 1");
  }
  if (options.chunk_bytes < kMinChunkBytes || options.chunk_bytes > kMaxChunkBytes) {
    return Status(StatusCode::kInvalidArgument, "chunk_bytes must be within [" +
                                                    std::to_string(kMinChunkBytes) + ", " +
                                                    std::to_string(kMaxChunkBytes) + "], got " +
                                                    std::to_string(options.chunk_bytes));
  }
  if (options.window < 1) return Status(StatusCode::kInvalidArgument, "window must be >= 1");
  if (options.fanout < 0) return Status(StatusCode::kInvalidArgument, "fanout must be >= 0");
  if (options.listen.empty()) return Status(StatusCode::kInvalidArgument, "listen is empty");
  if (options.heartbeat_timeout.count() != 0 && options.heartbeat_timeout < kMinHeartbeatTimeout) {
    // Clients beat once a second (PROTOCOL.md, section 4.6).
    return Status(StatusCode::kInvalidArgument, "heartbeat_timeout must be 0 (never) or >= " +
                                                    std::to_string(kMinHeartbeatTimeout.count()) +
                                                    " ms");
  }
  Status secret = ValidateSecret(options.secret);
  if (!secret.ok()) return secret.WithContext("ServerOptions::secret");
  return ValidatePartition(options.partition);
}

}  // namespace

Server::~Server() = default;

namespace internal {

Result<std::unique_ptr<Server>> StartServer(ServerOptions options, ModelView model,
                                            const std::shared_ptr<transfer::DataPlane>& plane,
                                            bool relay) {
  Status status = ValidateOptions(options);
  if (status.ok()) status = ValidateModelView(model);
  if (status.ok() && relay && options.transport.rendezvous_uri.empty() &&
      plane->bound_rendezvous().empty()) {
    status = Status(StatusCode::kInvalidArgument,
                    "a relay needs the shared MPI rendezvous of the instances it loads from and "
                    "serves (TransportOptions::rendezvous_uri): it starts MPI before it hears "
                    "from its source, so it cannot adopt the source's own");
  }
  if (!status.ok()) return status;
  Result<std::shared_ptr<transfer::Transport>> transport = plane->Start("");
  if (!transport.ok()) return transport.status();
  std::optional<Manifest> manifest;
  if (!relay) {
    const auto start = Clock::now();
    manifest = BuildManifest(model, options.chunk_bytes);
    Log().debug("digests of {} tensors ({} bytes, {} chunks) computed in {:.3f} s",
                model.tensors.size(), model.total_bytes(), manifest->chunk_digests.size(),
                SecondsSince(start));
  }
  auto server = std::make_unique<ServerImpl>(std::move(options), std::move(model),
                                             std::move(*transport), std::move(manifest));
  status = server->Bind();
  if (!status.ok()) return status;
  server->StartThread();
  return std::unique_ptr<Server>(std::move(server));
}

}  // namespace internal

Result<std::unique_ptr<Server>> Server::Start(ServerOptions options, ModelView model) {
  const auto plane = transfer::MakeMpiDataPlane(options.transport);
  return internal::StartServer(std::move(options), std::move(model), plane);
}

Result<std::unique_ptr<Server>> Server::StartRelay(ServerOptions options, ModelView destination) {
  const auto plane = transfer::MakeMpiDataPlane(options.transport);
  return internal::StartServer(std::move(options), std::move(destination), plane, true);
}

}  // namespace netloader
