#pragma once

// A ZeroMQ socket's events that matter to netloader: handshakes that failed, and why (a secret
// on one side only, or different secrets), and on a client whether its connection was ever made.

#include <cstdint>
#include <optional>
#include <string>
#include <zmq.hpp>

namespace netloader {

// The events of one socket that matter here: handshakes that failed, and why; on a client also
// whether its connection was ever made (a refused connect is known at once).
class SocketMonitor {
 public:
  static constexpr int kHandshakeFailures = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                            ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                            ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
  static constexpr int kConnects =
      ZMQ_EVENT_CONNECTED | ZMQ_EVENT_CONNECT_RETRIED | ZMQ_EVENT_DISCONNECTED;

  SocketMonitor(zmq::context_t& context, zmq::socket_t& watched, const std::string& name,
                int events = kHandshakeFailures);
  zmq::socket_t& socket() { return socket_; }
  struct Event {
    uint16_t id;     // ZMQ_EVENT_*
    uint32_t value;  // errno, ZMQ_PROTOCOL_ERROR_*, or the reconnect interval
    bool handshake_failed() const { return (id & kHandshakeFailures) != 0; }
  };
  // Reads one waiting event; nullopt if none is waiting.
  std::optional<Event> Read();

 private:
  zmq::socket_t socket_;
};

// Why a handshake failed, for a person: `we_authenticate` says whether this side uses a secret.
// Without one, any failure means the peer has one; with one, the cause is not always known.
std::string DescribeHandshakeFailure(const SocketMonitor::Event& event, bool we_authenticate);

}  // namespace netloader
