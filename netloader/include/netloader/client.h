#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "netloader/export.h"
#include "netloader/status.h"
#include "netloader/tensor.h"
#include "netloader/transport_options.h"

namespace netloader {

// Called on the loading thread after each verified chunk.
using ProgressCallback = std::function<void(uint64_t bytes_done, uint64_t bytes_total)>;

// See ClientOptions::connect_hook.
enum class ConnectEvent { kBefore, kAfter };

struct ClientOptions {
  // ZeroMQ endpoints of sources ("tcp://host:port"), tried in order until one succeeds.
  std::vector<std::string> sources;
  // Optional model id the source must declare (Fingerprint::model_id).
  std::string model_id;
  // The partition the destination tensors belong to.
  Partition partition;
  // MPI receives in flight.
  int window = 4;
  // A source must answer Register within this time.
  std::chrono::milliseconds register_timeout{10000};
  // How long to keep retrying a source that answers Busy before moving to the next.
  std::chrono::milliseconds busy_timeout{60000};
  // MPI connect must complete within this time.
  std::chrono::milliseconds connect_timeout{30000};
  // The transfer fails when no chunk arrives for this long.
  std::chrono::milliseconds stall_timeout{30000};
  // From Accept until Done the client sends a heartbeat this often over ZeroMQ (at most 1 s:
  // servers may give up after 2 s of silence)...
  std::chrono::milliseconds heartbeat_interval{1000};
  // ...and gives up on a source that answers none for this long (it died or froze). Must
  // exceed heartbeat_interval.
  std::chrono::milliseconds heartbeat_timeout{10000};
  // The shared secret (netloader/secret.h) the sources hold; empty: talk to sources that run
  // without one. A mismatch either way fails the attempt at once with PermissionDenied.
  std::string secret;
  // Receive each chunk that coalesces several small tensors into a small reused ring (window x
  // chunk size), verify it there and copy it into place, instead of receiving it straight into
  // the destination (an MPI datatype scattering into many small tensors is slow: measured 19 %
  // of raw MPI over TCP, BENCHMARKS.md). Chunks that are one contiguous span (slices of large
  // tensors, or small tensors lying back to back) always land in place and are verified there.
  bool staged_receive = true;
  ProgressCallback progress;  // optional
  // Optional. Called on the loading thread just before each MPI connect to a source (kBefore)
  // and as soon as that connect returns, connected or not (kAfter). Open MPI 4.1 can wedge both
  // sides when two processes of one mpirun job connect to the same other job at the same moment
  // (DESIGN.md, "Multi-rank instances"); the ranks of a multi-rank engine
  // use this hook to connect one after another while their transfers still overlap.
  std::function<void(ConnectEvent)> connect_hook;
  TransportOptions transport;
};

// One source tried, and how it went.
struct SourceAttempt {
  std::string source;
  Status status;
};

struct LoadStats {
  std::string source;  // the source that delivered
  uint64_t bytes = 0;
  uint64_t tensors = 0;
  uint64_t chunks = 0;
  double seconds = 0;  // from the first Register sent to the last chunk verified
  double gbps = 0;     // bytes / seconds / 1e9: the load's rate, MPI start-up and connect included
  double transfer_gbps = 0;  // bytes / transfer_seconds / 1e9: the data plane's own rate
  // Where `seconds` went, for the source that delivered:
  double register_seconds = 0;          // Register sent until Accept received (incl. Busy retries)
  double transport_seconds = 0;         // MPI start-up; 0 when MPI was already initialised
  double connect_seconds = 0;           // MPI connect to the source
  double transfer_seconds = 0;          // first chunk posted until the last one verified
  std::vector<SourceAttempt> attempts;  // every source tried, in order, the last one succeeded
  // The source's XXH3-64 of each tensor, in storage order: what VerifyModel checks against.
  std::vector<uint64_t> tensor_digests;
};

// Initialises the MPI data plane now, so that a later Load or Server::Start does not pay for it.
// Needs a shared rendezvous (options.rendezvous_uri): MPI's rendezvous is fixed at start-up.
// Errors: InvalidArgument (no rendezvous given, or MPI already bound to another), Unavailable,
// Timeout.
NETLOADER_EXPORT Status InitializeTransport(const TransportOptions& options);

// For hosts that call MPI_Init themselves, such as the ranks of an instance started by
// `mpirun --ompi-server file:PATH -np N` (PATH being the rendezvous every instance shares, also
// given as TransportOptions::rendezvous_uri). Call before MPI_Init: sets the Open MPI settings
// netloader's data plane needs (pml ucx over TCP on options.interface), keeping any the user has
// already set. Then initialise MPI with MPI_THREAD_MULTIPLE; netloader uses it as it is.
NETLOADER_EXPORT void PrepareMpiEnvironment(const TransportOptions& options);

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
// as the files written from them) against the source's per-tensor digests in `stats`. One pass
// over the memory. Errors: ChecksumMismatch naming the tensors that differ (up to 5, then a
// count), InvalidArgument when the model has another number of tensors.
NETLOADER_EXPORT Status VerifyModel(const ModelView& model, const LoadStats& stats);

}  // namespace netloader
