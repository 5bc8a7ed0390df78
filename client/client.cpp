// Load (netloader/client.h): validates the options, then runs attempts on sources as the
// source schedule hands them out, up to ClientOptions::stripe at once, over one ledger.

#include <unistd.h>

#include <algorithm>
#include <thread>
#include <unordered_map>

#include "client/attempt.h"
#include "client/cancel.h"
#include "client/client_internal.h"
#include "client/cold_start.h"
#include "client/source_schedule.h"
#include "netloader/fingerprint.h"
#include "netloader/limits.h"
#include "netloader/secret.h"
#include "netloader/src/base/log.h"
#include "netloader/src/base/xxh3.h"
#include "netloader/src/metrics/metrics.h"
#include "netloader/src/registry/discovery.h"
#include "netloader/src/stream/relay_feed.h"
#include "transfer/mpi/transport.h"

namespace netloader {
namespace {

// What `patterns` add to a Register: each one's bytes and its field's framing (at most 4).
size_t RegisterBytes(const std::vector<std::string>& patterns) {
  size_t bytes = 0;
  for (const std::string& pattern : patterns) bytes += pattern.size() + 4;
  return bytes;
}

// The relay must serve exactly the destination's memory, and the whole of it.
Status CheckRelay(internal::RelayFeed* relay, const ClientOptions& options,
                  const ModelView& destination) {
  if (relay == nullptr) {
    return Status(StatusCode::kInvalidArgument,
                  "ClientOptions::relay was not started with Server::StartRelay");
  }
  if (!options.tensors.empty()) {
    return Status(StatusCode::kInvalidArgument,
                  "ClientOptions::relay serves the whole model; it cannot go with `tensors`");
  }
  const ModelView& served = relay->relayed_model();
  bool same = served.tensors.size() == destination.tensors.size();
  for (size_t i = 0; same && i < served.tensors.size(); ++i) {
    same = served.tensors[i].data == destination.tensors[i].data &&
           served.tensors[i].size_bytes == destination.tensors[i].size_bytes &&
           served.tensors[i].name == destination.tensors[i].name;
  }
  if (!same) {
    return Status(StatusCode::kInvalidArgument,
                  "ClientOptions::relay serves other tensors than the destination being loaded "
                  "(start it over the same ModelView)");
  }
  return Status::Ok();
}

Status ValidateOptions(const ClientOptions& options) {
  if (options.sources.empty() && options.registry.empty()) {
    return Status(StatusCode::kInvalidArgument, "no sources given, and no registry to find them");
  }
  for (const std::string& s : options.sources) {
    if (s.empty()) return Status(StatusCode::kInvalidArgument, "a source endpoint is empty");
  }
  if (options.window < 1) return Status(StatusCode::kInvalidArgument, "window must be >= 1");
  if (options.stripe < 1) return Status(StatusCode::kInvalidArgument, "stripe must be >= 1");
  if (options.cold_start_wait.count() < 0) {
    return Status(StatusCode::kInvalidArgument, "cold_start_wait must be >= 0");
  }
  if (options.heartbeat_interval.count() < 1 ||
      options.heartbeat_interval > kMaxHeartbeatInterval ||
      (options.heartbeat_timeout.count() > 0 &&
       options.heartbeat_timeout <= options.heartbeat_interval)) {
    return Status(StatusCode::kInvalidArgument, "heartbeat_interval must be within [1, " +
                                                    std::to_string(kMaxHeartbeatInterval.count()) +
                                                    "] ms and below heartbeat_timeout (0: never)");
  }
  Status secret = ValidateSecret(options.secret);
  if (!secret.ok()) return secret.WithContext("ClientOptions::secret");
  const size_t pattern_bytes = RegisterBytes(options.tensors);
  if (pattern_bytes > kMaxTensorPatternBytes) {
    return Status(StatusCode::kInvalidArgument,
                  "ClientOptions::tensors: " + std::to_string(options.tensors.size()) +
                      " patterns take " + std::to_string(pattern_bytes) +
                      " bytes, more than one Register carries (" +
                      std::to_string(kMaxTensorPatternBytes) +
                      "); select with wildcards instead of listing names");
  }
  return ValidatePartition(options.partition);
}

// The tensor patterns a partial load's Register carries: the selection's exact names, so that a
// source holding more tensors that match the patterns (a whole model, for a pipeline stage)
// still serves; names too many for one Register go out as the patterns themselves, which must
// then select the same on the source.
std::vector<std::string> RegisterPatterns(const ClientOptions& options,
                                          const ModelView& destination) {
  std::vector<std::string> patterns;
  if (options.tensors.empty()) return patterns;
  for (const TensorView& t : destination.tensors) patterns.push_back(ExactTensorPattern(t.name));
  if (RegisterBytes(patterns) > kMaxTensorPatternBytes) patterns = options.tensors;
  return patterns;
}

// Runs attempts on the sources the schedule hands out until it has none left for this thread.
void RunSources(const internal::LoadContext& load, internal::SourceSchedule& schedule) {
  const ClientOptions& options = load.options;
  while (std::optional<internal::SourceSchedule::Turn> turn =
             schedule.Next(internal::IsCancelled(options.cancel))) {
    Log().debug("loading {} tensors ({} bytes, {} verified already) from {}",
                load.destination.tensors.size(), load.destination.total_bytes(),
                load.ledger.verified_bytes(), turn->source);
    internal::Attempt attempt(load, turn->source, turn->redirects);
    Result<LoadStats> result = attempt.Run();
    if (result.ok()) {
      schedule.Delivered(*turn, std::move(*result), attempt.verified_bytes());
      return;
    }
    schedule.Failed(*turn, result.status(), attempt.verified_bytes(), attempt.redirect(),
                    internal::IsCancelled(options.cancel));
  }
}

// The sources to try, in order: the holders the registry lists, best first, then
// ClientOptions::sources. When the registry lists none and no sources are given, a cold start
// (WaitForColdStart). Without a registry answer, the given sources alone (with a warning);
// Unavailable when there are none.
Result<std::vector<std::string>> Sources(const ClientOptions& options,
                                         const Fingerprint& fingerprint,
                                         internal::RelayFeed* relay) {
  if (options.registry.empty()) return options.sources;
  registry::Wanted wanted;
  wanted.model_id = options.model_id;
  wanted.partition = options.partition;
  wanted.whole_model = options.tensors.empty();
  wanted.table_digest = wanted.whole_model ? fingerprint.table_digest : "";
  wanted.topology = options.topology;
  if (options.relay != nullptr) {
    wanted.self = options.relay->endpoint();
    wanted.identity = wanted.self;
  } else {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    wanted.identity = std::string(host) + ":" + std::to_string(getpid());
  }
  auto discover = [&] {
    const auto deadline =
        Clock::now() + std::min<Clock::duration>(options.register_timeout, std::chrono::seconds(5));
    return registry::Discover(options.registry, wanted, deadline);
  };
  Result<std::vector<std::string>> found = discover();
  if (!found.ok()) {
    if (options.sources.empty()) return found.status().WithContext("no source");
    Log().warn("registry: {}; loading from the {} sources given", found.status().message(),
               options.sources.size());
    return options.sources;
  }
  if (found->empty() && options.sources.empty() && wanted.whole_model &&
      options.cold_start_wait.count() > 0) {
    found = internal::WaitForColdStart(options, wanted, relay, discover);
    if (!found.ok()) return found.status();
  }
  std::vector<std::string> sources = *found;
  for (const std::string& s : options.sources) {
    if (std::find(sources.begin(), sources.end(), s) == sources.end()) sources.push_back(s);
  }
  if (sources.empty()) {
    return Status(StatusCode::kUnavailable, "no source: " + internal::NoHolder(options));
  }
  Log().info("registry: {} of {} sources from {}; trying {} first", found->size(), sources.size(),
             options.registry, sources.front());
  return sources;
}

void LogLoaded(const LoadStats& stats) {
  std::string delivered_by;
  for (const SourceAttempt& a : stats.attempts) {
    if (a.bytes > 0) delivered_by += (delivered_by.empty() ? "" : ", ") + a.source;
  }
  Log().info(
      "loaded {} tensors, {} bytes from {} in {:.3f} s (the last transfer {:.3f} s at {:.2f} "
      "GB/s), every chunk verified",
      stats.tensors, stats.bytes, delivered_by.empty() ? stats.source : delivered_by, stats.seconds,
      stats.transfer_seconds, stats.transfer_gbps);
}

}  // namespace

namespace internal {

Result<LoadStats> Load(const ClientOptions& options, const ModelView& whole_destination,
                       transfer::DataPlane& plane, ReceiveOptions receiving) {
  Status status = ValidateOptions(options);
  if (status.ok()) status = ValidateModelView(whole_destination);
  if (!status.ok()) return status;
  // A partial load fills only the selected tensors, streamed in name order.
  Result<ModelView> selected = ModelView{};
  if (!options.tensors.empty()) {
    selected = SelectTensors(whole_destination, options.tensors);
    if (!selected.ok()) return selected.status().WithContext("ClientOptions::tensors");
  }
  const ModelView& destination = options.tensors.empty() ? whole_destination : *selected;
  const Fingerprint fingerprint = MakeFingerprint(destination, options.model_id, options.partition);
  const std::vector<std::string> patterns = RegisterPatterns(options, destination);
  RelayFeed* relay = nullptr;
  if (options.relay != nullptr) {
    relay = RelayFeedOf(*options.relay);
    status = CheckRelay(relay, options, whole_destination);
    if (!status.ok()) return status;
  }
  const auto start = Clock::now();
  Result<std::vector<std::string>> sources = Sources(options, fingerprint, relay);
  if (!sources.ok()) {
    metrics::LoadEnded(sources.status(), 0, 0, 0, 0);
    if (relay != nullptr) relay->LoadEnded(sources.status());  // it refuses newcomers, naming why
    return sources.status();
  }
  EarlyStart early(plane, options.transport);
  LoadLedger ledger(destination.total_bytes(), options.stripe, options.progress, relay);
  std::mutex connect_mu;
  const LoadContext load{options, destination, fingerprint, patterns,  plane,
                         early,   ledger,      receiving,   connect_mu};
  SourceSchedule schedule(*sources);
  // Up to `stripe` sources at once, each on a thread of its own.
  std::vector<std::thread> striped;
  for (int i = 1; i < std::min<int>(options.stripe, static_cast<int>(sources->size())); ++i) {
    striped.emplace_back([&] { RunSources(load, schedule); });
  }
  RunSources(load, schedule);
  for (std::thread& t : striped) t.join();
  Result<LoadStats> outcome = schedule.Outcome(IsCancelled(options.cancel));
  ledger.Ended(outcome.ok() ? Status::Ok() : outcome.status());
  metrics::BytesReceived(ledger.received_bytes());
  if (!outcome.ok()) {
    metrics::LoadEnded(outcome.status(), 0, 0, 0, 0);
    return outcome.status();
  }
  LoadStats stats = std::move(*outcome);
  stats.bytes_received = ledger.received_bytes();
  stats.bytes_reused = ledger.reused_bytes();
  stats.seconds = SecondsSince(start);
  stats.gbps = stats.bytes / stats.seconds / 1e9;
  metrics::LoadEnded(Status::Ok(), stats.seconds, stats.register_seconds, stats.transport_seconds,
                     stats.transfer_seconds);
  LogLoaded(stats);
  return stats;
}

}  // namespace internal

Status VerifyModel(const ModelView& model, const LoadStats& stats) {
  if (stats.tensor_names.size() != stats.tensor_digests.size()) {
    return Status(StatusCode::kInvalidArgument,
                  "the stats list " + std::to_string(stats.tensor_names.size()) +
                      " tensor names for " + std::to_string(stats.tensor_digests.size()) +
                      " digests (not a LoadStats from Load)");
  }
  std::unordered_map<std::string_view, const TensorView*> by_name;
  for (const TensorView& t : model.tensors) by_name.emplace(t.name, &t);
  std::string differing;
  size_t count = 0;
  for (size_t i = 0; i < stats.tensor_names.size(); ++i) {
    auto found = by_name.find(stats.tensor_names[i]);
    if (found == by_name.end()) {
      return Status(
          StatusCode::kInvalidArgument,
          "the model lacks tensor '" + stats.tensor_names[i] + "', which the load filled");
    }
    const TensorView& t = *found->second;
    if (XXH3_64bits(t.data, t.size_bytes) == stats.tensor_digests[i]) continue;
    if (++count <= 5) differing += (differing.empty() ? "" : ", ") + t.name;
  }
  if (count == 0) return Status::Ok();
  if (count > 5) differing += " and " + std::to_string(count - 5) + " more";
  return Status(StatusCode::kChecksumMismatch,
                std::to_string(count) + " tensors differ from the source's digests: " + differing);
}

Result<LoadStats> Load(const ClientOptions& options, const ModelView& destination) {
  return internal::Load(options, destination, *transfer::MakeMpiDataPlane(options.transport));
}

}  // namespace netloader
