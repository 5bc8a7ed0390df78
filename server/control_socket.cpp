#include "server/control_socket.h"

#include "netloader/limits.h"
#include "netloader/src/base/log.h"

namespace netloader::serving {

Result<std::unique_ptr<ControlSocket>> ControlSocket::Bind(const ServerOptions& options) {
  std::unique_ptr<ControlSocket> socket(new ControlSocket());
  Status bound = socket->BindTo(options);
  if (!bound.ok()) return bound;
  return socket;
}

Status ControlSocket::BindTo(const ServerOptions& options) {
  try {
    socket_ = zmq::socket_t(context_, zmq::socket_type::router);
    socket_.set(zmq::sockopt::linger, 0);
    // Past this zmq drops the connection itself; below it oversized messages get a Reject.
    socket_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kServerCutoffBytes));
    socket_.set(zmq::sockopt::router_mandatory, 1);
    // With a secret the socket is a CURVE server and ZAP checks each client's key; without
    // one, the monitor still reports clients that try to authenticate.
    if (!options.secret.empty()) {
      zap_.emplace(context_, options.secret);
      MakeCurveServer(socket_, options.secret);
    }
    monitor_.emplace(context_, socket_, "server");
    std::string endpoint = options.listen;
    if (endpoint.size() > 2 && endpoint.compare(endpoint.size() - 2, 2, ":0") == 0) {
      endpoint.replace(endpoint.size() - 1, 1, "*");
    }
    socket_.bind(endpoint);
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
    if (!options.advertise.empty()) {
      const std::string port = endpoint_.substr(endpoint_.rfind(':') + 1);
      const bool ipv6 = options.advertise.find(':') != std::string::npos;
      endpoint_ =
          "tcp://" + (ipv6 ? "[" + options.advertise + "]" : options.advertise) + ":" + port;
    }
  } catch (const zmq::error_t& e) {
    return Status(StatusCode::kUnavailable, "cannot bind '" + options.listen + "': " + e.what());
  }
  return Status::Ok();
}

ControlSocket::Polled ControlSocket::Poll(std::chrono::milliseconds timeout,
                                          const std::function<void()>& on_failed_handshake) {
  zmq::pollitem_t items[] = {
      {static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0},
      {static_cast<void*>(monitor_->socket()), 0, ZMQ_POLLIN, 0},
      {zap_ ? static_cast<void*>(zap_->socket()) : nullptr, 0, ZMQ_POLLIN, 0}};
  try {
    zmq::poll(items, zap_ ? 3 : 2, timeout);
    if (items[1].revents & ZMQ_POLLIN) {
      while (std::optional<SocketMonitor::Event> event = monitor_->Read()) {
        Log().warn("a client failed the connection handshake: {}",
                   DescribeHandshakeFailure(*event, zap_.has_value()));
        on_failed_handshake();
      }
    }
    if (zap_ && (items[2].revents & ZMQ_POLLIN)) {
      for (int i = 0; i < 64; ++i) {
        std::optional<std::string> refused;
        if (!zap_->AnswerOne(&refused)) break;
        if (refused)
          Log().warn("refused a client at {}: it does not hold the shared secret", *refused);
      }
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EINTR) return Polled::kInterrupted;
    Log().error("polling {} failed: {}", endpoint_, e.what());
    return Polled::kFailed;
  }
  return (items[0].revents & ZMQ_POLLIN) ? Polled::kReadable : Polled::kIdle;
}

bool ControlSocket::Receive(std::vector<zmq::message_t>* frames) {
  frames->clear();
  try {
    zmq::message_t frame;
    if (!socket_.recv(frame, zmq::recv_flags::dontwait)) return false;
    frames->push_back(std::move(frame));
    while (frames->back().more()) {
      zmq::message_t next;
      (void)socket_.recv(next, zmq::recv_flags::none);
      frames->push_back(std::move(next));
    }
  } catch (const zmq::error_t& e) {
    Log().warn("receive on {} failed: {}", endpoint_, e.what());
    return false;
  }
  return true;
}

bool ControlSocket::Send(const std::string& identity, wire::Envelope& reply,
                         const std::string& prefix, bool req_delimiter) {
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

void ControlSocket::SendReject(const std::string& identity, StatusCode code,
                               const std::string& reason, const std::vector<FieldDiff>& diffs,
                               const ModelView* table) {
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

// frames[0] is ZeroMQ's routing id. A REQ socket puts an empty delimiter frame first; the reply
// carries one too, so that a REQ socket receives it.
void ControlSocket::RejectFraming(const std::vector<zmq::message_t>& frames) {
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

void ControlSocket::Close() {
  monitor_.reset();
  zap_.reset();
  socket_.close();
}

}  // namespace netloader::serving
