#pragma once

// The ZeroMQ side of one attempt: a DEALER connected to one source, CURVE-authenticated when
// there is a secret, with a socket monitor that turns a failed handshake or a vanished source
// into an error at once instead of a deadline later. Not thread-safe: one thread at a time owns
// it (the attempt's, or its Heartbeats' while they run).

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "netloader/src/control/curve.h"
#include "netloader/src/control/socket_monitor.h"
#include "netloader/src/protocol/wire.h"
#include "netloader/status.h"

namespace netloader::internal {

class ControlChannel {
 public:
  ControlChannel(const std::string& source, const std::string& secret)
      : source_(source), secret_(secret) {}

  // Errors: InvalidArgument (a bad endpoint).
  Status Connect();
  // Queues `message` without waiting. Errors: Unavailable.
  Status Send(wire::Envelope& message);
  // Waits for one message. A failed handshake (secrets differ, or only one side has one) fails
  // at once with PermissionDenied, a refused connection with Unavailable, instead of waiting out
  // `timeout`; `cancel` becoming true, with Cancelled (looked at every 50 ms). Nothing within
  // `timeout`: Timeout (a timeout of 0 only looks).
  Result<wire::Envelope> Receive(std::chrono::milliseconds timeout,
                                 const std::atomic<bool>* cancel = nullptr);
  // Nothing still queued needs to leave: the source is gone.
  void DropPending();

 private:
  Status HandshakeFailed(SocketMonitor::Event event);
  // What a monitor event means for the exchange under way: OK to go on waiting, or why not.
  Status Interpret(const SocketMonitor::Event& event);

  std::string source_;
  std::string secret_;
  zmq::context_t context_{1};
  zmq::socket_t socket_;
  std::optional<SocketMonitor> monitor_;
  bool connected_ = false;     // the TCP connection was made at least once
  bool disconnected_ = false;  // and was closed since
};

}  // namespace netloader::internal
