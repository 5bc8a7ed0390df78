#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "netloader/export.h"
#include "netloader/options.h"
#include "netloader/status.h"
#include "netloader/tensor.h"

namespace netloader {

// The fields shared with ClientOptions (model id, partition, window, connect/stall/heartbeat
// deadlines, secret, transport) are in PeerOptions (netloader/options.h).
struct ServerOptions : PeerOptions {
  // ZeroMQ endpoint to bind for registration requests. Port 0 or "*" picks a free port;
  // Server::endpoint() tells which.
  std::string listen = "tcp://127.0.0.1:0";
  // The host name or address other instances reach this server at, when `listen` binds an
  // address they cannot use as it is (every interface: "tcp://0.0.0.0:7000", as a container
  // does; or an address behind NAT). Server::endpoint() is then "tcp://ADVERTISE:PORT" with the
  // bound port, and that is what the registry lists and what a relay tells its sources. Empty:
  // endpoint() is the bound endpoint.
  std::string advertise;
  // Clients streamed at once; one more gets Busy with a retry hint.
  int max_concurrent_transfers = 4;
  // Bytes per MPI message. Small tensors are coalesced and large ones split to this size. 1 MiB
  // measured faster than 4 MiB on every row of BENCHMARKS.md (2026-12-02: a chunk then stays in
  // a 2 MiB L2 to be hashed, and fewer bytes are in flight), and a relay forwards sooner
  // (DESIGN.md, "Relay fan-out").
  uint64_t chunk_bytes = 1ull << 20;
  // After Accept and after the chunks of each Request were sent, how long the client may be
  // silent (no Heartbeat, no Request) before its session is given up as lost; a client that
  // keeps beating may wait for its next Request or its Done as long as it likes.
  std::chrono::milliseconds done_timeout{30000};
  // How long a Busy client is told to wait before retrying.
  std::chrono::milliseconds busy_retry_hint{500};
  // Relay fan-out: with this many clients streaming from here, a newcomer is redirected to the
  // clients loading from here that serve while they load (ClientOptions::relay), so that a burst
  // of instances forms a tree in which each one forwards what it verified (DESIGN.md, "Relay
  // fan-out"). 1 makes a chain: with every host's link at the same rate, each instance then
  // receives at the full rate, and K instances load in about the time of one. 0: never redirect
  // (clients up to max_concurrent_transfers share this server's link).
  int fanout = 1;
  // With PeerOptions::registry: the lease of this server's record. A server that died or froze
  // drops out of the registry within this time; it renews the lease every third of it.
  std::chrono::seconds registry_ttl{10};
};

// Counters a host may poll. A session's outcome is counted, and it stops counting as active, in
// one update when the server retires it, within about 100 ms of its end; after Stop() every
// session has been counted.
struct ServerStats {
  uint64_t clients_served = 0;   // transfers the client confirmed as verified
  uint64_t clients_failed = 0;   // transfers that failed or were never confirmed
  uint64_t refused = 0;          // Register requests answered with Reject
  uint64_t busy = 0;             // Register requests answered with Busy
  uint64_t redirected = 0;       // Register requests answered with Redirect (ServerOptions::fanout)
  uint64_t unauthenticated = 0;  // connections that failed the shared-secret handshake
  uint64_t bytes_sent = 0;
  int active_transfers = 0;  // sessions open: from the Accept until the session ended
  // Memory held in staging rings, kept for the next sessions: at most max_concurrent_transfers
  // x window x chunk_bytes, and 0 for a model whose chunks all lie contiguous in memory.
  uint64_t staging_bytes = 0;
};

// Serves a model held in the host's memory to netloader clients, on background threads, while
// the host keeps working. The tensors in `model` must stay valid and unchanged until Stop()
// returns or the Server is destroyed.
// Thread-safe: every method may be called from any thread.
class NETLOADER_EXPORT Server {
 public:
  // Validates the model, computes its digests once (one pass over the memory), initialises MPI
  // (starting a private rendezvous if none is configured), binds the endpoint and starts serving.
  // Blocks for that work only. Errors: InvalidArgument (bad model or options, or a malformed
  // secret), Unavailable (bind or MPI start-up failed), Timeout (rendezvous did not start in
  // time).
  static Result<std::unique_ptr<Server>> Start(ServerOptions options, ModelView model);

  // Serve while loading: a server over `destination` before it holds the weights (a relay).
  // Start it, then pass it to Load as ClientOptions::relay with the same destination: from the
  // moment Load has its source's manifest, this server streams each chunk as soon as Load
  // verified it, and a client asking for a chunk not yet here waits for it (within its stall
  // timeout). Until then Register is answered Busy; partial loads are served once the load is
  // complete. If Load fails, Register is refused (Unavailable) until the host filled
  // `destination` otherwise (from disk) and called MarkLoaded. The tensors must stay valid until
  // Stop() returns. Needs a shared rendezvous (TransportOptions::rendezvous_uri): every instance
  // it loads from or serves must use the same one. Errors as Start.
  static Result<std::unique_ptr<Server>> StartRelay(ServerOptions options, ModelView destination);

  virtual ~Server();  // calls Stop()

  // The bound ZeroMQ endpoint, e.g. "tcp://127.0.0.1:41234".
  virtual std::string endpoint() const = 0;
  // The MPI rendezvous URI clients of this server use.
  virtual std::string rendezvous_uri() const = 0;
  virtual ServerStats stats() const = 0;
  // For a relay whose own load failed and whose host then filled the destination otherwise (from
  // disk): computes the digests (one pass over the memory) and serves everything. Clients still
  // streaming are cut off if the weights differ from what the failed load had begun. Without
  // effect on a server over loaded weights, or a relay whose load succeeded.
  virtual Status MarkLoaded() = 0;
  // Stops accepting, aborts transfers in progress, joins the threads. Returns within about
  // max(stall poll interval, 1 s) even when peers are dead. Idempotent.
  virtual void Stop() = 0;
};

}  // namespace netloader
