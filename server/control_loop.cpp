#include "server/control_loop.h"

#include "netloader/fingerprint.h"
#include "netloader/limits.h"
#include "netloader/src/base/clock.h"
#include "netloader/src/base/log.h"
#include "netloader/src/metrics/metrics.h"
#include "netloader/src/model/selection.h"

namespace netloader::serving {

ControlLoop::ControlLoop(const ServerOptions& options, const ModelView& model,
                         transfer::Transport& transport, std::unique_ptr<ControlSocket> socket,
                         RelayState& content, RingPool& rings, StatsCounter& stats)
    : options_(options),
      model_(model),
      transport_(transport),
      content_(content),
      rings_(rings),
      stats_(stats),
      socket_(std::move(socket)),
      policy_(Registrar(
                  MakeFingerprint(model_, options_.model_id, options_.partition),
                  [this] { return transport_.rendezvous(); }, options_.max_concurrent_transfers),
              options_.fanout, options_.busy_retry_hint) {}

void ControlLoop::Start() {
  thread_ = std::thread([this] { Run(); });
}

void ControlLoop::Stop() {
  stopping_ = true;
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (thread_.joinable()) thread_.join();
}

void ControlLoop::Run() {
  Log().info("{} {} tensors ({} bytes) at {} (rendezvous {}), up to {} clients at once, {}",
             content_.relay() ? "relaying, while they load," : "serving", model_.tensors.size(),
             model_.total_bytes(), endpoint(), transport_.rendezvous(),
             options_.max_concurrent_transfers,
             socket_->authenticates() ? "shared secret required" : "without authentication");
  while (!stopping_.load()) {
    const ControlSocket::Polled polled = socket_->Poll(std::chrono::milliseconds(100), [this] {
      stats_.Update([](ServerStats& s) { s.unauthenticated++; });
    });
    if (polled == ControlSocket::Polled::kInterrupted) continue;
    if (polled == ControlSocket::Polled::kFailed) break;
    ReapFinishedSessions();
    DropSilentSessions();
    // Bounded per wake-up so reaping and Stop() stay responsive under a flood.
    for (int i = 0; i < 64 && polled == ControlSocket::Polled::kReadable; ++i) {
      if (!ReceiveOne()) break;
    }
  }
  for (auto& [id, session] : sessions_) session->Abort();
  for (auto it = sessions_.begin(); it != sessions_.end();) it = Retire(it);
  socket_->Close();
  Log().info("server at {} stopped", endpoint());
}

bool ControlLoop::ReceiveOne() {
  std::vector<zmq::message_t> frames;
  if (!socket_->Receive(&frames)) return false;
  const std::string identity = frames[0].to_string();
  if (frames.size() != 2) {
    socket_->RejectFraming(frames);
    return true;
  }
  Result<wire::Envelope> envelope =
      Decode(frames[1].data(), frames[1].size(), kMaxServerMessageBytes);
  if (!envelope.ok()) {
    Log().warn("refused a malformed request: {}", envelope.status().ToString());
    socket_->SendReject(identity, envelope.status().code(), envelope.status().message());
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
      socket_->SendReject(identity, StatusCode::kInvalidArgument,
                          std::string("servers take Register, Request, Heartbeat, Done and "
                                      "StatusRequest; this was ") +
                              BodyName(*envelope));
  }
  return true;
}

// Decode, decide (AdmissionPolicy), act.
void ControlLoop::HandleRegister(const std::string& identity, const wire::Register& request) {
  const std::string client = request.client_name().empty() ? "?" : request.client_name();
  Status valid = ValidateRegister(request);
  if (!valid.ok()) {
    Log().warn("refused client {}: {}", client, valid.message());
    stats_.Update([](ServerStats& s) { s.refused++; });
    socket_->SendReject(identity, valid.code(), valid.message());
    return;
  }
  Registration registration{{FromWire(request.fingerprint()), request.rendezvous_uri(), {}},
                            request.serve_endpoint(),
                            request.redirects()};
  // A partial load: the tensors its patterns select here, which must be those it selected.
  std::vector<size_t> selected;
  ModelView selection;
  if (request.tensors_size() > 0) {
    selected = MatchTensors(model_, {request.tensors().begin(), request.tensors().end()});
    for (size_t i : selected) selection.tensors.push_back(model_.tensors[i]);
    registration.request.selected_table_digest = TableDigest(selection);
  }
  RelayState::Snapshot content;
  const Decision decision = policy_.Decide(
      registration, {[this] { return transport_.health(); },
                     [&] {
                       content = content_.Now();
                       return Holding{content.whole != nullptr, content.complete, content.failure};
                     },
                     [this] { return Children(); }});
  switch (decision.kind) {
    case Decision::Kind::kReject: {
      Log().warn("refused client {}: {}", client, decision.log);
      stats_.Update([](ServerStats& s) { s.refused++; });
      const bool partial = registration.request.selected_table_digest.has_value();
      socket_->SendReject(identity, decision.code, decision.reason, decision.diffs,
                          decision.send_table ? (partial ? &selection : &model_) : nullptr);
      return;
    }
    case Decision::Kind::kBusy:
      SendBusy(identity, client, decision.reason, decision.retry_after);
      return;
    case Decision::Kind::kRedirect: {
      Log().info("client {} redirected to {} (fan-out limit {} reached)", client,
                 decision.relays[0], options_.fanout);
      stats_.Update([](ServerStats& s) { s.redirected++; });
      metrics::RedirectSent();
      wire::Envelope reply;
      for (const std::string& relay : decision.relays) reply.mutable_redirect()->add_sources(relay);
      socket_->Send(identity, reply);
      return;
    }
    case Decision::Kind::kAccept:
      Admit(identity, client, request, selected, std::move(selection), content);
      return;
  }
}

void ControlLoop::Admit(const std::string& identity, const std::string& client,
                        const wire::Register& request, const std::vector<size_t>& selected,
                        ModelView selection, const RelayState::Snapshot& content) {
  Result<std::unique_ptr<transfer::Listener>> listener = transport_.Listen();
  if (!listener.ok()) {
    Log().error("cannot open an MPI port for client {}: {}", client, listener.status().ToString());
    stats_.Update([](ServerStats& s) { s.refused++; });
    socket_->SendReject(identity, StatusCode::kUnavailable,
                        "server cannot open an MPI port: " + listener.status().message());
    return;
  }
  const bool partial = request.tensors_size() > 0;
  auto session = std::make_unique<Session>(
      policy_.Open(), client,
      partial ? content_.Selected(selected, std::move(selection)) : content.whole,
      content.generation, request.serve_endpoint(), std::move(*listener));

  wire::Envelope reply;
  wire::Accept* accept = reply.mutable_accept();
  accept->set_session_id(session->id());
  accept->set_mpi_port(session->port());
  accept->set_rendezvous_uri(session->rendezvous());
  if (!socket_->Send(identity, reply, session->stream().accept_manifest_bytes)) {
    policy_.Close(session->id(), "");
    return;
  }
  Log().info("client {} registered as session {:016x}{}; {} of {} slots in use", client,
             session->id(),
             partial ? fmt::format(" for {} of the {} tensors",
                                   session->stream().view.tensors.size(), model_.tensors.size())
                     : "",
             policy_.active(), policy_.limit());
  session->Start(options_, rings_, content_.relay() ? &content_ : nullptr);
  const uint64_t id = session->id();
  if (!session->serve_endpoint().empty()) metrics::RelayChildren(+1);
  sessions_[id] = std::move(session);
  CountSessions();
}

void ControlLoop::SendBusy(const std::string& identity, const std::string& client,
                           const std::string& reason, std::chrono::milliseconds retry) {
  Log().info("client {} told to retry: {}", client, reason);
  stats_.Update([](ServerStats& s) { s.busy++; });
  wire::Envelope reply;
  wire::Busy* busy = reply.mutable_busy();
  busy->set_retry_after_ms(static_cast<uint32_t>(retry.count()));
  busy->set_active(static_cast<uint32_t>(policy_.active()));
  busy->set_limit(static_cast<uint32_t>(policy_.limit()));
  socket_->Send(identity, reply);
}

Session* ControlLoop::ActiveSession(const std::string& identity, uint64_t id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second->aborted()) {
    socket_->SendReject(identity, StatusCode::kInvalidArgument,
                        "session " + HexId(id) + " is not active on this server");
    return nullptr;
  }
  it->second->Heard();
  return it->second.get();
}

void ControlLoop::HandleHeartbeat(const std::string& identity, const wire::Heartbeat& beat) {
  Session* session = ActiveSession(identity, beat.session_id());
  if (session == nullptr) return;
  wire::Envelope reply;
  reply.mutable_heartbeat()->set_session_id(session->id());
  socket_->Send(identity, reply);
}

void ControlLoop::HandleRequest(const std::string& identity, const wire::Request& request) {
  Session* session = ActiveSession(identity, request.session_id());
  if (session == nullptr) return;
  Result<std::vector<size_t>> chunks = FromWire(request, session->stream().plan.size());
  if (!chunks.ok()) {
    // The session cannot go on: the client and this server no longer agree on the stream.
    Log().warn("client {} sent a bad Request: {}", session->client(), chunks.status().message());
    session->GiveUp("it sent a bad Request: " + chunks.status().message());
    socket_->SendReject(identity, StatusCode::kInvalidArgument, chunks.status().message());
    return;
  }
  session->Post(std::move(*chunks));
}

void ControlLoop::HandleDone(const wire::Done& done) {
  auto it = sessions_.find(done.session_id());
  if (it == sessions_.end()) {
    Log().warn("ignored a Done ({}) for session {:016x}, which is not active on this server",
               done.verified() ? "verified" : "failed: " + done.message(), done.session_id());
    return;
  }
  it->second->Conclude(done);
}

// What this server is doing (PROTOCOL.md, section 4.7).
void ControlLoop::HandleStatus(const std::string& identity) {
  wire::Envelope reply;
  wire::ServerStatus* status = reply.mutable_status();
  const RelayState::Snapshot content = content_.Now();
  status->set_state(content.complete           ? wire::ServerStatus::SERVING
                    : !content.failure.empty() ? wire::ServerStatus::FAILED
                    : content.whole            ? wire::ServerStatus::LOADING
                                               : wire::ServerStatus::WAITING);
  status->set_bytes_held(content.complete ? model_.total_bytes() : content.bytes_held);
  status->set_failure(content.failure);
  // "Serving" only when a new client could connect now: the same check an admission makes.
  if (status->state() == wire::ServerStatus::SERVING ||
      status->state() == wire::ServerStatus::LOADING) {
    const Status plane = transport_.health();
    if (!plane.ok()) {
      status->set_state(wire::ServerStatus::UNAVAILABLE);
      status->set_failure(plane.message());
    }
  }
  wire::Fingerprint fingerprint;
  ToWire(
      Fingerprint{kProtocolVersion, options_.model_id, content_.table_digest(), options_.partition},
      &fingerprint);
  status->set_model_id(fingerprint.model_id());
  *status->mutable_partition() = fingerprint.partition();
  status->set_table_digest(content_.table_digest());
  status->set_bytes_total(model_.total_bytes());
  status->set_sessions(static_cast<uint32_t>(policy_.active()));
  status->set_max_sessions(static_cast<uint32_t>(policy_.limit()));
  status->set_fanout(static_cast<uint32_t>(options_.fanout));
  for (const std::string& child : Children()) status->add_children(child);
  const ServerStats counted = stats_.Get();
  status->set_bytes_sent(counted.bytes_sent);
  status->set_clients_served(counted.clients_served);
  status->set_clients_failed(counted.clients_failed);
  status->set_redirected(counted.redirected);
  socket_->Send(identity, reply);
}

std::vector<std::string> ControlLoop::Children() const {
  std::vector<std::string> children;
  for (const auto& [id, session] : sessions_) {
    if (session->serve_endpoint().empty() || session->aborted() || session->finished()) continue;
    children.push_back(session->serve_endpoint());
  }
  return children;
}

void ControlLoop::DropSilentSessions() {
  if (options_.heartbeat_timeout.count() <= 0) return;
  const int64_t now = NowMs();
  for (auto& [id, session] : sessions_) {
    const int64_t silent = now - session->last_heard_ms();
    if (session->finished() || session->aborted() || silent <= options_.heartbeat_timeout.count()) {
      continue;
    }
    session->GiveUp("no heartbeat from the client for " + std::to_string(silent) + " ms");
  }
}

void ControlLoop::ReapFinishedSessions() {
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    it = it->second->finished() ? Retire(it) : std::next(it);
  }
}

ControlLoop::Sessions::iterator ControlLoop::Retire(Sessions::iterator it) {
  Session& session = *it->second;
  session.Join();
  policy_.Close(session.id(), session.serve_endpoint());
  stats_.Update([&](ServerStats& s) {
    (session.served() ? s.clients_served : s.clients_failed)++;
    s.bytes_sent += session.bytes_sent();
    s.active_transfers = policy_.active();
  });
  metrics::SessionEnded(session.served());
  metrics::BytesSent(content_.relay() ? metrics::Role::kRelay : metrics::Role::kServer,
                     session.bytes_sent());
  if (!session.serve_endpoint().empty()) metrics::RelayChildren(-1);
  return sessions_.erase(it);
}

void ControlLoop::CountSessions() {
  stats_.Update([this](ServerStats& s) { s.active_transfers = policy_.active(); });
}

}  // namespace netloader::serving
