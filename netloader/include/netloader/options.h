#pragma once

// What a server and a client configure alike: what must match between them, the data plane,
// the deadlines of a transfer and the shared secret. ServerOptions and ClientOptions extend it.

#include <chrono>
#include <cmath>
#include <string>

#include "netloader/tensor.h"
#include "netloader/transport.h"

namespace netloader {

// Seconds, as command lines, engine configs and Python give deadlines, as the options'
// milliseconds (to the nearest, so that a value survives the round trip), and back.
inline std::chrono::milliseconds FromSeconds(double seconds) {
  return std::chrono::milliseconds(std::llround(seconds * 1000));
}
inline double ToSeconds(std::chrono::milliseconds ms) {
  return static_cast<double>(ms.count()) / 1000.0;
}

struct PeerOptions {
  // Model id/revision (Fingerprint::model_id), e.g. "org/name@rev". A server declares it; a
  // client that sets it is served only by a server that declares the same.
  std::string model_id;
  // The partition the tensors belong to; both sides must agree.
  Partition partition;
  // MPI messages in flight on each transfer.
  int window = 4;
  // The MPI connection must be made within this time of the Accept.
  std::chrono::milliseconds connect_timeout{30000};
  // A transfer fails when no chunk completes for this long (the peer died or stalled).
  std::chrono::milliseconds stall_timeout{30000};
  // The other side is given up when it has sent no heartbeat for this long (it died or froze):
  // a server aborts the session and frees its slot, a client stops the transfer. 0: never. A
  // server needs at least 2 s (clients beat once a second).
  std::chrono::milliseconds heartbeat_timeout{10000};
  // The shared secret (netloader/secret.h) both sides hold; empty: no authentication, and an
  // unencrypted control plane (anyone who reaches a server may pull its weights). A mismatch
  // either way fails the attempt at once with PermissionDenied.
  std::string secret;
  TransportOptions transport;
  // The registry (DESIGN.md, "The registry"): an etcd client URL, "http://HOST:PORT", optionally
  // with a path that keeps this fleet's records apart ("http://etcd:2379/fleet-a"; default
  // prefix /netloader/). A server publishes itself there while it serves; a client finds its
  // sources there, best first, before ClientOptions::sources. Empty: none.
  std::string registry;
  // A label such as a rack or a zone: a server publishes it, a client prefers holders with its
  // own. Empty: none.
  std::string topology;
};

}  // namespace netloader
