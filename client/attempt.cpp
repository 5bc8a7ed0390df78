#include "client/attempt.h"

#include <unistd.h>

#include <algorithm>
#include <limits>

#include "client/cancel.h"
#include "netloader/limits.h"
#include "netloader/src/base/host_memory.h"
#include "netloader/src/base/log.h"

namespace netloader::internal {
namespace {

std::string ClientName() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string(host) + ":" + std::to_string(getpid());
}

// MPI start-up forks, which write-protects every private page of the process; receiving into
// such pages then takes one copy-on-write fault per 4 KiB page, and faults are slow on these VMs
// (DESIGN.md: 0.35 GB/s; measured 0.27 GB/s end to end). MADV_POPULATE_WRITE (Linux 5.14) makes
// the destination writable again in one call, without faults. Contents are untouched. Best
// effort: older kernels or non-writable ranges just skip it.
void PrefaultForWrite(const ModelView& model) {
  // One call per run of adjacent tensors, not per tensor: models have thousands of small ones.
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  for (const TensorView& t : model.tensors) {
    if (t.size_bytes == 0 || IsFileBacked(t.data)) continue;
    const auto begin = reinterpret_cast<uintptr_t>(t.data) & ~(page - 1);
    ranges.emplace_back(begin, reinterpret_cast<uintptr_t>(t.data) + t.size_bytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 0; i < ranges.size();) {
    uintptr_t begin = ranges[i].first, end = ranges[i].second;
    // Merge ranges that overlap or leave less than a page between them.
    for (++i; i < ranges.size() && ranges[i].first <= end + page; ++i) {
      end = std::max(end, ranges[i].second);
    }
    (void)PopulateForWrite(reinterpret_cast<void*>(begin), end - begin);
  }
}

// A refusal as a status. When the tensor tables differ the source sent its own, and the
// message names the tensors that differ on each side.
Status RejectStatus(const wire::Reject& reject, const ModelView& destination, bool partial) {
  std::string message = "refused: " + reject.reason();
  const std::string tables =
      partial ? DescribeSelectionDifferences(reject.served_tensors(), destination)
              : DescribeTableDifferences(reject.served_tensors(), destination);
  if (!tables.empty()) message += "; " + tables;
  std::vector<FieldDiff> diffs;
  for (const wire::FieldDiff& d : reject.diffs()) {
    diffs.push_back({d.field(), d.server_value(), d.client_value()});
  }
  return Status(FromRejectCode(reject.code()), message, std::move(diffs));
}

}  // namespace

Attempt::~Attempt() {
  if (attached_) load_.ledger.Detach();
}

Result<LoadStats> Attempt::Run() {
  const auto start = Clock::now();
  Status status = control_.Connect();
  if (!status.ok()) return status;
  Result<wire::Accept> accept = Register();
  if (!accept.ok()) return accept.status();
  register_seconds_ = SecondsSince(start);
  session_ = accept->session_id();
  Result<LoadStats> stats = Transfer(*accept, start);
  if (!stats.ok()) {
    if (beats_ && beats_->lost()) control_.DropPending();  // a lost source takes nothing more
    SendDone(false, failed_chunk_, stats.status().ToString());
  }
  return stats;
}

wire::Envelope Attempt::RegisterMessage() const {
  wire::Envelope request;
  wire::Register* reg = request.mutable_register_();
  ToWire(load_.fingerprint, reg->mutable_fingerprint());
  reg->set_rendezvous_uri(load_.plane.bound_rendezvous());
  reg->set_client_name(ClientName());
  for (const std::string& pattern : load_.patterns) reg->add_tensors(pattern);
  if (options_.relay != nullptr) reg->set_serve_endpoint(options_.relay->endpoint());
  reg->set_redirects(static_cast<uint32_t>(redirects_));
  return request;
}

Result<wire::Accept> Attempt::Register() {
  const auto busy_deadline = Clock::now() + options_.busy_timeout;
  while (true) {
    wire::Envelope request = RegisterMessage();
    Status sent = control_.Send(request);
    if (!sent.ok()) return sent;
    Result<wire::Envelope> reply = control_.Receive(options_.register_timeout, options_.cancel);
    if (!reply.ok()) return reply.status();
    switch (reply->body_case()) {
      case wire::Envelope::kAccept:
        return reply->accept();
      case wire::Envelope::kReject:
        return RejectStatus(reply->reject(), load_.destination, !options_.tensors.empty());
      case wire::Envelope::kRedirect:
        return Redirected(reply->redirect());
      case wire::Envelope::kBusy: {
        Status waited = WaitBusy(reply->busy(), busy_deadline);
        if (!waited.ok()) return waited;
        continue;
      }
      default:
        return Status(StatusCode::kProtocolMismatch, "unexpected reply to Register");
    }
  }
}

Status Attempt::WaitBusy(const wire::Busy& busy, Clock::time_point busy_deadline) {
  const auto wait =
      std::chrono::milliseconds(std::clamp<uint32_t>(busy.retry_after_ms(), 10, 10000));
  if (Clock::now() + wait > busy_deadline) {
    // A source with free slots says Busy while it cannot serve yet (a relay still waiting for
    // its own source): say that rather than "0 of 4 slots in use".
    const std::string why = busy.active() < busy.limit()
                                ? "it is still loading and cannot serve yet, with " +
                                      std::to_string(busy.active()) + " of " +
                                      std::to_string(busy.limit()) + " slots in use"
                                : std::to_string(busy.active()) + " of " +
                                      std::to_string(busy.limit()) + " slots in use";
    return Status(StatusCode::kBusy, "source stayed busy (" + why + ") for " +
                                         std::to_string(options_.busy_timeout.count()) + " ms");
  }
  Log().debug("{} is busy; retrying in {} ms", source_, wait.count());
  return SleepUnlessCancelled(options_.cancel, Clock::now() + wait) ? Status::Ok()
                                                                    : CancelledStatus();
}

Status Attempt::Redirected(const wire::Redirect& redirect) {
  const int count = redirect.sources_size();
  if (count < 1 || count > kMaxRedirectSources) {
    return Status(StatusCode::kProtocolMismatch,
                  "the source redirected to " + std::to_string(count) + " sources (1 to " +
                      std::to_string(kMaxRedirectSources) + " allowed)");
  }
  std::string listed;
  for (const std::string& to : redirect.sources()) {
    if (to.empty() || to.size() > kMaxEndpointBytes) {
      return Status(StatusCode::kProtocolMismatch,
                    "the source redirected to an empty or overlong endpoint");
    }
    listed += (listed.empty() ? "" : ", ") + to;
  }
  redirect_.assign(redirect.sources().begin(), redirect.sources().end());
  return Status(StatusCode::kUnavailable,
                "at its fan-out limit; redirected to the relays " + listed);
}

Result<ReceivePlan> Attempt::Attach(const Manifest& manifest) {
  const ModelView& destination = load_.destination;
  // The server matched the fingerprint's table digest; a manifest for another table means a
  // broken or lying source.
  if (manifest.table_digest != load_.fingerprint.table_digest ||
      manifest.tensor_digests.size() != destination.tensors.size()) {
    return Status(StatusCode::kFingerprintMismatch,
                  "the source's manifest is for another tensor table (" +
                      std::to_string(manifest.tensor_digests.size()) + " tensors, digest '" +
                      manifest.table_digest + "'; expected " +
                      std::to_string(destination.tensors.size()) + ", '" +
                      load_.fingerprint.table_digest + "')");
  }
  Result<ReceivePlan> receive = ReceivePlan::Make(destination, manifest.chunk_bytes,
                                                  manifest.chunk_digests, manifest.model_digest);
  if (!receive.ok()) return receive.status();
  // Bytes verified from an earlier source are kept only if this one holds the same content.
  Status status = load_.ledger.Attach(manifest.tensor_digests, source_);
  if (!status.ok()) return status;
  attached_ = true;
  load_.ledger.Relay(manifest, source_);
  if (options_.destination_filled) load_.ledger.KeepWhatIsInPlace(*receive);
  return receive;
}

Result<LoadStats> Attempt::Transfer(const wire::Accept& accept, Clock::time_point start) {
  Result<Manifest> manifest = FromWire(accept.manifest());
  if (!manifest.ok()) return manifest.status();
  Result<ReceivePlan> receive = Attach(*manifest);
  if (!receive.ok()) return receive.status();
  // The first chunks are asked for before MPI starts, so the source has the Request when the
  // MPI connection is made. A lone source is asked for everything at once.
  // Striped, chunks are handed out two windows at a time, so that a slower source gets fewer
  // and the sources finish within about one batch of each other.
  const size_t batch = options_.stripe > 1 ? 2 * static_cast<size_t>(options_.window)
                                           : std::numeric_limits<size_t>::max();
  std::vector<size_t> current = load_.ledger.Claim(*receive, batch, &scan_from_);
  beats_.emplace(control_, session_, options_);
  Ask(current);

  const auto phase = Clock::now();
  load_.early.Wait();
  Result<std::shared_ptr<transfer::Transport>> transport =
      load_.plane.Start(accept.rendezvous_uri());
  if (!transport.ok()) return Fail(*receive, current, transport.status());
  transport_ = std::move(*transport);
  PrefaultForWrite(load_.destination);
  transport_seconds_ = SecondsSince(phase);
  Result<std::unique_ptr<transfer::Channel>> channel = Connect(accept.mpi_port());
  if (!channel.ok()) return Fail(*receive, current, channel.status());
  connect_seconds_ = SecondsSince(phase) - transport_seconds_;
  const auto data_start = Clock::now();

  Log().debug("connected to {} over MPI; receiving {} of {} chunks{}", source_, current.size(),
              receive->size(), options_.stripe > 1 ? " (the first batch)" : "");
  Status status = ReceiveAll(*receive, **channel, std::move(current), batch);
  if (!status.ok()) return status;
  load_.ledger.AddReceived(receive->posted_bytes());
  if (!load_.ledger.complete()) {
    (*channel)->Abandon();
    return beats_->why().WithContext(source_);
  }
  LoadStats stats = Stats(*manifest, *receive, start, data_start);
  // Done before the collective disconnect: the server disconnects once it reads a verified Done.
  SendDone(true, -1, "");
  channel->reset();
  return stats;
}

Status Attempt::ReceiveAll(ReceivePlan& plan, transfer::Channel& channel,
                           std::vector<size_t> current, size_t batch) {
  LoadLedger& ledger = load_.ledger;
  transfer::StreamOptions stream;
  stream.window = options_.window;
  stream.stall_timeout = options_.stall_timeout;
  stream.cancel = &beats_->lost();
  while (!current.empty()) {
    // The next batch is asked for before this one is received, so the source streams on.
    std::vector<size_t> next = ledger.Claim(plan, batch, &scan_from_);
    Ask(next);
    Status status = plan.Receive(channel, stream, load_.receiving, current, [&](size_t c) {
      const auto [begin, end] = plan.range(c);
      received_ += end - begin;
      ledger.Verified(begin, end);
    });
    if (!status.ok()) {
      ledger.Release(plan, next);
      failed_chunk_ = plan.failed_chunk();
      if (beats_->lost()) status = beats_->why();
      channel.Abandon();
      return Fail(plan, current, status.WithContext("transfer from " + source_));
    }
    current = std::move(next);
    // Striped: the rest is being fetched from other sources; take over what one gives back.
    while (current.empty() && !ledger.complete() && !beats_->lost()) {
      ledger.WaitForChange(std::chrono::milliseconds(100));
      current = ledger.Claim(plan, batch, &scan_from_);
      Ask(current);
    }
  }
  return Status::Ok();
}

LoadStats Attempt::Stats(const Manifest& manifest, const ReceivePlan& plan, Clock::time_point start,
                         Clock::time_point data_start) const {
  const ModelView& destination = load_.destination;
  LoadStats stats;
  stats.source = source_;
  stats.bytes = destination.total_bytes();
  stats.tensors = destination.tensors.size();
  stats.chunks = plan.size();
  stats.transfer_seconds = SecondsSince(data_start);
  stats.seconds = SecondsSince(start);
  stats.register_seconds = register_seconds_;
  stats.transport_seconds = transport_seconds_;
  stats.connect_seconds = connect_seconds_;
  stats.transfer_gbps = stats.transfer_seconds > 0 ? received_ / stats.transfer_seconds / 1e9 : 0;
  for (const TensorView& t : destination.tensors) stats.tensor_names.push_back(t.name);
  stats.tensor_digests = manifest.tensor_digests;
  return stats;
}

void Attempt::Ask(const std::vector<size_t>& chunks) {
  wire::Request all;
  ToWire(chunks, &all);
  for (int first = 0; first < all.ranges_size(); first += kMaxRangesPerRequest) {
    wire::Envelope request;
    request.mutable_request()->set_session_id(session_);
    const int end = std::min(all.ranges_size(), first + kMaxRangesPerRequest);
    for (int r = first; r < end; ++r) *request.mutable_request()->add_ranges() = all.ranges(r);
    beats_->Send(std::move(request));
  }
}

Result<std::unique_ptr<transfer::Channel>> Attempt::Connect(const std::string& port) {
  std::lock_guard<std::mutex> lock(load_.connect_mu);
  if (options_.connect_hook) options_.connect_hook(ConnectEvent::kBefore);
  Result<std::unique_ptr<transfer::Channel>> channel =
      transport_->Connect(port, Clock::now() + options_.connect_timeout, &beats_->lost());
  if (options_.connect_hook) options_.connect_hook(ConnectEvent::kAfter);
  // Cut short because the source was lost, or because the load was cancelled: say which.
  if (!channel.ok() && beats_->lost())
    return beats_->why().WithContext("MPI connect to " + source_);
  if (!channel.ok()) return channel.status().WithContext("MPI connect to " + source_);
  return channel;
}

Status Attempt::Fail(const ReceivePlan& plan, const std::vector<size_t>& asked, Status status) {
  load_.ledger.Release(plan, asked);
  load_.ledger.AddReceived(plan.posted_bytes());
  return status;
}

void Attempt::SendDone(bool verified, int64_t failed_chunk, const std::string& message) {
  if (session_ == 0 || done_sent_) return;
  beats_.reset();  // the socket is ours again
  wire::Envelope envelope;
  wire::Done* done = envelope.mutable_done();
  done->set_session_id(session_);
  done->set_verified(verified);
  done->set_failed_chunk(failed_chunk);
  done->set_message(message);
  Status sent = control_.Send(envelope);
  if (!sent.ok()) Log().debug("could not send Done to {}: {}", source_, sent.message());
  done_sent_ = true;
}

}  // namespace netloader::internal
