#pragma once

// The server's ZeroMQ ROUTER socket: binding, the shared-secret check, and the framing of
// netloader's messages (one frame holding one Envelope after ZeroMQ's routing id).

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "netloader/fingerprint.h"
#include "netloader/server.h"
#include "netloader/src/control/curve.h"
#include "netloader/src/control/socket_monitor.h"
#include "netloader/src/protocol/wire.h"
#include "netloader/status.h"
#include "netloader/tensor.h"

namespace netloader::serving {

// The bound ROUTER socket, its context, and with a secret the CURVE server and ZAP handler that
// check each client's key; a monitor reports clients that fail the handshake.
// Not thread-safe: the thread that starts the server binds it; from then on only the control
// thread uses it (endpoint() is fixed at Bind and may be read by any thread).
class ControlSocket {
 public:
  // Binds options.listen (a port of 0 picks a free one). Errors: Unavailable (cannot bind).
  static Result<std::unique_ptr<ControlSocket>> Bind(const ServerOptions& options);
  ControlSocket(const ControlSocket&) = delete;
  ControlSocket& operator=(const ControlSocket&) = delete;

  // The bound endpoint, e.g. "tcp://127.0.0.1:41234".
  const std::string& endpoint() const { return endpoint_; }
  // Whether clients must hold the shared secret.
  bool authenticates() const { return zap_.has_value(); }

  enum class Polled { kReadable, kIdle, kInterrupted, kFailed };
  // Waits up to `timeout` for a message. Meanwhile logs each failed handshake, calling
  // `on_failed_handshake` for each, and answers waiting key checks. kFailed: polling failed
  // (logged); the socket is of no further use.
  Polled Poll(std::chrono::milliseconds timeout, const std::function<void()>& on_failed_handshake);
  // Reads one message's frames (frames[0] is the sender's routing id); false when none is waiting
  // or the receive failed (logged).
  bool Receive(std::vector<zmq::message_t>* frames);

  // Sends `prefix` (already serialized Envelope bytes, merged by the parser) followed by `reply`
  // to `identity`; with `req_delimiter`, after an empty frame, as a REQ socket expects. False
  // when it could not (logged).
  bool Send(const std::string& identity, wire::Envelope& reply, const std::string& prefix = "",
            bool req_delimiter = false);
  // Sends a Reject; with `table`, it carries that table (served_tensors).
  void SendReject(const std::string& identity, StatusCode code, const std::string& reason,
                  const std::vector<FieldDiff>& diffs = {}, const ModelView* table = nullptr);
  // Answers a message of other than one frame after the routing id with a Reject that says how
  // messages are framed.
  void RejectFraming(const std::vector<zmq::message_t>& frames);

  // Closes the socket and its helpers; the server then takes no more messages.
  void Close();

 private:
  ControlSocket() = default;
  Status BindTo(const ServerOptions& options);

  zmq::context_t context_{1};
  std::optional<ZapHandler> zap_;  // set when a secret is configured
  zmq::socket_t socket_;
  std::optional<SocketMonitor> monitor_;
  std::string endpoint_;
};

}  // namespace netloader::serving
