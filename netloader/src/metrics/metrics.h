#pragma once

// The library's Prometheus metrics (prometheus-cpp; the only user of it): what the server,
// client and registry code count. Each call is a few atomic adds; nothing is served until
// ServeMetrics (netloader/metrics.h). Thread-safe.

#include <cstdint>

#include "netloader/status.h"

namespace netloader::metrics {

// Who sent: a server over loaded weights, or a relay (serving while it loads, and after).
enum class Role { kServer, kRelay };

void BytesSent(Role role, uint64_t bytes);
void BytesReceived(uint64_t bytes);
void ChunkVerificationFailed();
// A server's session ended, confirmed verified by its client (`served`) or not.
void SessionEnded(bool served);
void RedirectSent();
void RedirectFollowed();
// A load ended: its outcome and, when it succeeded, how long it took and where the time went.
void LoadEnded(const Status& status, double seconds, double register_seconds,
               double transport_seconds, double transfer_seconds);
// One etcd call of the registry: `op` is grant, keepalive, revoke, put or range.
void RegistryCall(const char* op, bool ok);
// Relays streaming from this process's servers now: +1 when one is admitted, -1 when it ends.
void RelayChildren(int delta);

}  // namespace netloader::metrics
