#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "netloader/export.h"
#include "netloader/limits.h"
#include "netloader/options.h"
#include "netloader/status.h"
#include "netloader/tensor.h"
#include "netloader/transport.h"

namespace netloader {

// Called on the loading thread after each verified chunk.
using ProgressCallback = std::function<void(uint64_t bytes_done, uint64_t bytes_total)>;

// See ClientOptions::connect_hook.
enum class ConnectEvent { kBefore, kAfter };

class Server;

// The fields shared with ServerOptions (model id, partition, window, connect/stall/heartbeat
// deadlines, secret, transport) are in PeerOptions (netloader/options.h).
struct ClientOptions : PeerOptions {
  // ZeroMQ endpoints of sources ("tcp://host:port"), tried in order until the model is loaded.
  // A source that fails mid-transfer costs only what was in flight: the next one is asked only
  // for the chunks not yet verified, provided it holds the same content (per-tensor digests).
  // A source at its fan-out limit may redirect the client to relays loading from it: those are
  // tried next, then that source again (at most kMaxRedirects redirects per load; a Register
  // says how many were followed, and a server redirects no client that followed that many).
  // With PeerOptions::registry, the holders found there are tried first, best first, and these
  // follow (then they may be empty).
  std::vector<std::string> sources;
  // A source must answer Register within this time.
  std::chrono::milliseconds register_timeout{10000};
  // Pull from up to this many of `sources` at once (striping), each sending disjoint chunks
  // handed out a few at a time, so that a slower source sends fewer; a source that fails is
  // replaced by the next untried one, which takes over its chunks. All must hold the same
  // weights (per-tensor digests) and share one MPI rendezvous. 1: one source at a time.
  int stripe = 1;
  // A cold start, with PeerOptions::registry and no `sources`, for a whole-model load: when the
  // registry lists no holder of the model, the instances starting together read it from storage
  // once between them. The first load with a `relay` (and cold_start_read) to claim the read in
  // the registry returns
  // Unavailable at once, saying so: its host reads the checkpoint from storage and calls
  // relay->MarkLoaded(), which serves it (the claim lasts as long as the relay's registry
  // lease). Every other load waits up to this long for a holder to appear, then loads from it
  // (a load without a relay only waits when another instance claimed the read). A reader that
  // dies loses its claim with its lease, and a waiting instance claims it. 0: no waiting, no
  // claim; Unavailable at once when nobody holds the model.
  std::chrono::milliseconds cold_start_wait{300000};
  // Whether a load with a `relay` may claim the storage read of a cold start (its host must then
  // read the checkpoint and call MarkLoaded). False for a host that has no checkpoint to read:
  // its load then only waits, as one without a relay does.
  bool cold_start_read = true;
  // How long to keep retrying a source that answers Busy before moving to the next.
  std::chrono::milliseconds busy_timeout{60000};
  // From Accept until Done the client sends a heartbeat this often over ZeroMQ (at most 1 s:
  // servers may give up after 2 s of silence); it must be below heartbeat_timeout.
  std::chrono::milliseconds heartbeat_interval{1000};
  // A delta load: the destination already holds an older copy of the model (the same layout,
  // e.g. the previous step's weights). Chunks whose bytes already match the source's digests are
  // kept, and only the others are pulled; every chunk of the result is verified either way.
  bool destination_filled = false;
  // A partial load: only the destination's tensors whose names match one of these patterns
  // (TensorPatternMatches, netloader/tensor.h: '*', '?', '\' escapes) are loaded, in name
  // order; the others are left untouched. Each pattern must match a tensor of the destination.
  // A source serves when it holds every selected tensor with the same dtype and shape, whatever
  // else it holds: another pipeline split, a whole model, other experts. The pipeline split
  // (Partition::pp_size, pp_rank) is then not compared; the tensor-parallel split and
  // layout_key are. The selection travels in one Register as its exact names; when those exceed
  // kMaxTensorPatternBytes the patterns travel instead, and must then select exactly the same
  // tensors on the source. Empty: the whole destination (the default).
  std::vector<std::string> tensors;
  // Serve while loading: a server started with Server::StartRelay over this same destination.
  // Load feeds it each chunk as soon as it is verified, so that other instances can load from
  // this one while it loads, and tells sources that it serves at relay->endpoint(), so that a
  // source at its fan-out limit may redirect newcomers here (ServerOptions::fanout). The whole
  // model only (not with `tensors`). Null: this load serves nothing.
  Server* relay = nullptr;
  // Optional. Set it to true from any thread to stop the load: Load then returns Cancelled
  // within about 50 ms (an MPI start-up under way, ~0.2 s, is waited out), tries no further
  // source, and leaves the destination's contents undefined. Must outlive the Load call.
  const std::atomic<bool>* cancel = nullptr;
  ProgressCallback progress;  // optional
  // Optional. Called on the loading thread just before each MPI connect to a source (kBefore)
  // and as soon as that connect returns, connected or not (kAfter). Open MPI 4.1 can wedge both
  // sides when two processes of one mpirun job connect to the same other job at the same moment
  // (DESIGN.md, "Multi-rank instances"); the ranks of a multi-rank engine
  // use this hook to connect one after another while their transfers still overlap.
  std::function<void(ConnectEvent)> connect_hook;
};

// One source tried, and how it went.
struct SourceAttempt {
  std::string source;
  Status status;
  uint64_t bytes = 0;  // what this source delivered and was verified, also when it then failed
};

struct LoadStats {
  std::string source;  // the source that delivered
  // The bytes loaded (with ClientOptions::tensors, the selected tensors'), all verified.
  uint64_t bytes = 0;
  // Bytes of every chunk received or in flight when a source failed, over all sources: at least
  // `bytes`; what failures cost is the difference (at most window x chunk size per failure).
  uint64_t bytes_received = 0;
  // With ClientOptions::destination_filled: bytes already in the destination that matched the
  // source's digests, so were not pulled.
  uint64_t bytes_reused = 0;
  uint64_t tensors = 0;  // tensors loaded
  uint64_t chunks = 0;   // the last source's chunks
  double seconds = 0;    // from Load's start to the last chunk verified, over every source
  // bytes / seconds / 1e9: the load's rate, MPI start-up and connect included.
  double gbps = 0;
  double transfer_gbps = 0;  // the last source's bytes / transfer_seconds / 1e9
  // Where the last source's part of `seconds` went:
  double register_seconds = 0;  // Register sent until Accept received (incl. Busy retries)
  // Waiting for MPI start-up after Accept: 0 when MPI was already initialised, less when it began
  // while registering (a shared rendezvous configured: TransportOptions::rendezvous_uri).
  double transport_seconds = 0;
  double connect_seconds = 0;           // MPI connect to the source
  double transfer_seconds = 0;          // first chunk posted until the last one verified
  std::vector<SourceAttempt> attempts;  // every source tried, in order, the last one succeeded
  // The tensors loaded, in stream order (storage order; name order for a partial load), and the
  // source's XXH3-64 of each: what VerifyModel checks against.
  std::vector<std::string> tensor_names;
  std::vector<uint64_t> tensor_digests;
};

// Fills the host's pre-allocated `destination` tensors from the first source that holds the same
// model and partition. Every chunk is verified against the source's XXH3 digests before Load
// returns OK. On error the destination's contents are undefined and must not be used; the
// status message lists each source tried and why it failed. Blocks until done or failed; each
// step has its own deadline (ClientOptions). Not thread-safe with respect to `destination`.
// Errors: InvalidArgument (bad options or view), the last source's failure otherwise
// (Unavailable, Timeout, PermissionDenied, FingerprintMismatch, ProtocolMismatch,
// ChecksumMismatch, ...).
// Speed: fresh destination memory is filled fastest when it is backed by huge pages. Allocate
// large buffers 2 MiB-aligned and madvise(MADV_HUGEPAGE) them before their first touch (what
// HostModel::Allocate does); on the benchmark's VMs that made loads about 4x faster (DESIGN.md).
NETLOADER_EXPORT Result<LoadStats> Load(const ClientOptions& options, const ModelView& destination);

// Re-verifies a loaded model at any later time (the buffers Load filled, or a copy of them such
// as the files written from them) against the source's per-tensor digests in `stats`: each
// tensor the load filled, found in `model` by name (others in `model` are not looked at). One
// pass over that memory. Errors: ChecksumMismatch naming the tensors that differ (up to 5, then
// a count), InvalidArgument naming a tensor the load filled that `model` lacks.
NETLOADER_EXPORT Status VerifyModel(const ModelView& model, const LoadStats& stats);

// What a server is doing (QueryStatus): the facts its redirects are decided on.
struct SourceStatus {
  // "waiting" (a relay whose own load has no source yet), "loading" (a relay serving what it
  // verified), "serving" (holds every byte), "failed" (a relay whose own load failed) or
  // "unavailable" (holds bytes_held, but a new client cannot connect now: its MPI data plane is
  // down, failure says why).
  std::string state;
  std::string failure;  // with "failed" or "unavailable": why
  std::string model_id;
  Partition partition;
  std::string table_digest;
  uint64_t bytes_total = 0;
  uint64_t bytes_held = 0;  // verified here, servable
  int sessions = 0;         // clients streaming from it now
  int max_sessions = 0;
  int fanout = 0;  // ServerOptions::fanout
  // Where the clients streaming from it serve while they load: its children in a relay tree.
  std::vector<std::string> children;
  uint64_t bytes_sent = 0;  // over every ended session
  uint64_t clients_served = 0;
  uint64_t clients_failed = 0;
  uint64_t redirected = 0;
};

// Asks the server at `endpoint` what it is doing, with the deployment's shared secret (empty:
// none). Needs no session and changes nothing there. Errors: PermissionDenied (the secret
// differs), Unavailable (nothing listens there), Timeout (no answer within `timeout`),
// ProtocolMismatch (not a netloader server of this version).
NETLOADER_EXPORT Result<SourceStatus> QueryStatus(
    const std::string& endpoint, const std::string& secret,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));

}  // namespace netloader
