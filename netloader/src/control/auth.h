#pragma once

// ZeroMQ plumbing for the shared secret (netloader/secret.h): CURVE on the server and client
// sockets, the server's ZAP check of the client's key, and socket events that tell why a
// handshake failed.

#include <cstdint>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "netloader/secret.h"

namespace netloader {

// Makes `socket` a CURVE server whose key pair is derived from `secret`. Call before bind. The
// caller must also answer ZAP requests (ZapHandler) in the same context.
void MakeCurveServer(zmq::socket_t& socket, const std::string& secret);
// Makes `socket` a CURVE client holding the key pair derived from `secret` and expecting the
// server to hold it too. Call before connect.
void MakeCurveClient(zmq::socket_t& socket, const std::string& secret);

// Answers libzmq's authentication requests for the sockets of one context: a client is let in
// only when it presented the public key derived from the shared secret.
class ZapHandler {
 public:
  ZapHandler(zmq::context_t& context, const std::string& secret);
  zmq::socket_t& socket() { return socket_; }
  // Answers one waiting request; false when none was waiting. Sets `refused` to the client's
  // address when it was refused.
  bool AnswerOne(std::optional<std::string>* refused);

 private:
  zmq::socket_t socket_;
  std::string allowed_key_;  // 32 raw bytes
};

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
