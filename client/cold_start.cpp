#include "client/cold_start.h"

#include <algorithm>

#include "client/cancel.h"
#include "netloader/src/base/clock.h"
#include "netloader/src/base/log.h"
#include "netloader/src/registry/discovery.h"

namespace netloader::internal {
namespace {

constexpr std::chrono::seconds kCallTimeout{2};  // one etcd call, at most

std::string ModelName(const ClientOptions& options) {
  return options.model_id.empty() ? "this model" : "model " + options.model_id;
}

}  // namespace

std::string NoHolder(const ClientOptions& options) {
  const Partition& p = options.partition;
  return "the registry at " + options.registry + " lists no holder of " + ModelName(options) +
         " (tp " + std::to_string(p.tp_rank) + "/" + std::to_string(p.tp_size) + ", pp " +
         std::to_string(p.pp_rank) + "/" + std::to_string(p.pp_size) + ") that can serve now";
}

Result<std::vector<std::string>> WaitForColdStart(
    const ClientOptions& options, const registry::Wanted& wanted, RelayFeed* relay,
    const std::function<Result<std::vector<std::string>>()>& discover) {
  const std::string claim = registry::ReaderClaimName(wanted);
  const std::string model = ModelName(options);
  const auto give_up = Clock::now() + options.cold_start_wait;
  std::string reader;  // who reads from storage, as last seen
  while (true) {
    if (IsCancelled(options.cancel)) return CancelledStatus();
    Result<std::vector<std::string>> found = discover();
    if (!found.ok()) return found.status().WithContext("cold start");
    if (!found->empty()) {
      if (!reader.empty()) Log().info("registry: {} now serves {}", found->front(), model);
      return found;
    }
    Result<std::string> holder =
        registry::ClaimHolder(options.registry, claim, Clock::now() + kCallTimeout);
    if (!holder.ok()) return holder.status().WithContext("cold start");
    if (holder->empty()) {
      if (relay == nullptr || !options.cold_start_read) {
        return Status(StatusCode::kUnavailable,
                      "no source: " + NoHolder(options) +
                          ", and no instance reads it from storage (this load does not read for "
                          "the others: it has no relay, or no checkpoint to read)");
      }
      Result<bool> won = relay->ClaimInRegistry(claim);
      if (!won.ok()) return won.status().WithContext("cold start: claiming the storage read");
      if (*won) {
        Log().info(
            "registry: no instance holds {}; this one reads it from storage and then "
            "serves it (cold start)",
            model);
        return Status(StatusCode::kUnavailable,
                      "no source: " + NoHolder(options) +
                          "; this instance reads it from storage for the others (cold start)");
      }
      *holder = "another instance";  // it claimed first
    }
    if (*holder != reader) {
      Log().info("registry: no instance holds {} yet; {} reads it from storage; waiting up to {} s",
                 model, *holder,
                 std::chrono::duration_cast<std::chrono::seconds>(give_up - Clock::now()).count());
      reader = *holder;
    }
    if (Clock::now() >= give_up) {
      return Status(StatusCode::kTimeout,
                    "cold start: " + reader + " did not serve " + model + " within " +
                        std::to_string(options.cold_start_wait.count()) + " ms");
    }
    SleepUnlessCancelled(options.cancel,
                         std::min<Clock::time_point>(give_up, Clock::now() + kColdStartPoll));
  }
}

}  // namespace netloader::internal
