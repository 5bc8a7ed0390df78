#pragma once

// CURVE security from the shared secret (netloader/secret.h): the server's and the client's
// socket options, and the server's ZAP check of the client's key.

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

}  // namespace netloader
