#pragma once

// One attempt of a load on one source: connect and register over ZeroMQ, then, once accepted,
// claim chunks from the load's ledger, ask the source for them, receive and verify them over the
// data plane, and tell the source the outcome (Done). Runs on one thread (the load's, or a
// striped load's worker); what it shares with the other attempts is in LoadContext.

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "client/control_channel.h"
#include "client/early_start.h"
#include "client/heartbeats.h"
#include "client/load_ledger.h"
#include "netloader/client.h"
#include "netloader/fingerprint.h"
#include "netloader/src/base/clock.h"
#include "transfer/transport.h"

namespace netloader::internal {

// What every attempt of one load shares; it outlives them.
struct LoadContext {
  const ClientOptions& options;
  const ModelView& destination;  // a partial load's: the selected tensors, in stream order
  const Fingerprint& fingerprint;
  const std::vector<std::string>& patterns;  // what Register.tensors carries, or nothing
  transfer::DataPlane& plane;
  EarlyStart& early;
  LoadLedger& ledger;
  const ReceiveOptions receiving;
  // MPI connects one at a time (and the connect hook is called from one thread at a time).
  std::mutex& connect_mu;
};

class Attempt {
 public:
  // `redirects`: followed so far in this load (Register.redirects).
  Attempt(const LoadContext& load, const std::string& source, int redirects)
      : load_(load),
        options_(load.options),
        source_(source),
        redirects_(redirects),
        control_(source, load.options.secret) {}
  ~Attempt();
  Attempt(const Attempt&) = delete;
  Attempt& operator=(const Attempt&) = delete;

  // Loads what this source delivers. Errors: any the source's refusal names (with its diffs),
  // Unavailable (also after a redirect: see redirect()), Timeout, Busy, PermissionDenied,
  // ChecksumMismatch, TransferFailed, Cancelled.
  Result<LoadStats> Run();

  // Bytes this source delivered and were verified.
  uint64_t verified_bytes() const { return received_; }
  // Where the source redirected this client (Run then failed with Unavailable); empty if not.
  const std::vector<std::string>& redirect() const { return redirect_; }

 private:
  // Sends Register until Accepted, Rejected, or Busy for longer than busy_timeout.
  Result<wire::Accept> Register();
  wire::Envelope RegisterMessage() const;
  // Waits out a Busy reply's retry hint; an error when the busy timeout would pass first.
  Status WaitBusy(const wire::Busy& busy, Clock::time_point busy_deadline);
  Status Redirected(const wire::Redirect& redirect);
  // After Accept: the source's manifest checked against the destination, as a receive plan,
  // with this source attached to the ledger.
  Result<ReceivePlan> Attach(const Manifest& manifest);
  Result<LoadStats> Transfer(const wire::Accept& accept, Clock::time_point start);
  // Receives `current` and every further batch the ledger hands out, until the load is complete
  // or this source fails.
  Status ReceiveAll(ReceivePlan& plan, transfer::Channel& channel, std::vector<size_t> current,
                    size_t batch);
  LoadStats Stats(const Manifest& manifest, const ReceivePlan& plan, Clock::time_point start,
                  Clock::time_point data_start) const;
  // Asks the source for `chunks` (none: nothing), as Requests of at most kMaxRangesPerRequest
  // ranges each; they leave through the heartbeat thread, which owns the socket.
  void Ask(const std::vector<size_t>& chunks);
  // The MPI connection to the source; one connect at a time per load (DESIGN.md, "Multi-rank
  // instances"), between the connect hook's two calls.
  Result<std::unique_ptr<transfer::Channel>> Connect(const std::string& port);
  // This source failed: what it was asked for and did not deliver goes back to the others.
  Status Fail(const ReceivePlan& plan, const std::vector<size_t>& asked, Status status);
  void SendDone(bool verified, int64_t failed_chunk, const std::string& message);

  const LoadContext& load_;
  const ClientOptions& options_;
  const std::string source_;
  const int redirects_;
  std::vector<std::string> redirect_;
  bool attached_ = false;  // to the ledger, until destroyed
  size_t scan_from_ = 0;   // LoadLedger::Claim's cursor into this source's chunks
  std::shared_ptr<transfer::Transport> transport_;
  ControlChannel control_;
  std::optional<Heartbeats> beats_;  // from Accept until Done
  uint64_t received_ = 0;            // bytes received from this source and verified
  uint64_t session_ = 0;
  int64_t failed_chunk_ = -1;
  bool done_sent_ = false;
  double register_seconds_ = 0;
  double transport_seconds_ = 0;
  double connect_seconds_ = 0;
};

}  // namespace netloader::internal
