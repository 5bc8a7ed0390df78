#include "netloader/src/control/socket_monitor.h"

#include <cstring>

namespace netloader {

SocketMonitor::SocketMonitor(zmq::context_t& context, zmq::socket_t& watched,
                             const std::string& name, int events)
    : socket_(context, zmq::socket_type::pair) {
  const std::string endpoint = "inproc://netloader-monitor-" + name;
  if (zmq_socket_monitor(watched.handle(), endpoint.c_str(), events) != 0) throw zmq::error_t();
  socket_.set(zmq::sockopt::linger, 0);
  socket_.connect(endpoint);
}

std::optional<SocketMonitor::Event> SocketMonitor::Read() {
  zmq::message_t head, address;
  if (!socket_.recv(head, zmq::recv_flags::dontwait)) return std::nullopt;
  if (head.more()) (void)socket_.recv(address, zmq::recv_flags::none);
  Event event{0, 0};
  if (head.size() >= 6) {
    std::memcpy(&event.id, head.data(), 2);
    std::memcpy(&event.value, static_cast<const char*>(head.data()) + 2, 4);
  }
  return event;
}

std::string DescribeHandshakeFailure(const SocketMonitor::Event& event, bool we_authenticate) {
  if (!we_authenticate) {
    return "the peer uses a shared secret and this side runs without one (--no-auth)";
  }
  if (event.id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
      event.value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
    return "the peer runs without a shared secret (--no-auth) and this side requires one";
  }
  if (event.id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
    return "the peer's key was refused: it does not hold this side's shared secret";
  }
  // Often all a side learns: the other hung up during the handshake.
  return "the peer does not hold this side's shared secret (it holds another, or runs with "
         "--no-auth)";
}

}  // namespace netloader
