#include "client/control_channel.h"

#include <algorithm>

#include "client/cancel.h"
#include "netloader/limits.h"
#include "netloader/src/base/clock.h"

namespace netloader::internal {

Status ControlChannel::Connect() {
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

Status ControlChannel::HandshakeFailed(SocketMonitor::Event event) {
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

Status ControlChannel::Interpret(const SocketMonitor::Event& event) {
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

void ControlChannel::DropPending() { socket_.set(zmq::sockopt::linger, 0); }

Status ControlChannel::Send(wire::Envelope& message) {
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

Result<wire::Envelope> ControlChannel::Receive(std::chrono::milliseconds timeout,
                                               const std::atomic<bool>* cancel) {
  zmq::pollitem_t items[] = {{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0},
                             {static_cast<void*>(monitor_->socket()), 0, ZMQ_POLLIN, 0}};
  const auto deadline = Clock::now() + timeout;
  try {
    while (true) {
      const auto left =
          std::max(std::chrono::milliseconds(0),
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
        return Status(StatusCode::kTimeout, "no answer within " + std::to_string(timeout.count()) +
                                                " ms (is a netloader server listening there?)");
      }
    }
  } catch (const zmq::error_t& e) {
    return Status(StatusCode::kUnavailable, std::string("receive failed: ") + e.what());
  }
}

}  // namespace netloader::internal
