#pragma once

// A cold start: the registry lists no holder of the model. Of the instances starting together,
// the first to claim it in etcd reads the checkpoint from storage and then serves it; the others
// wait until it does, so that the checkpoint crosses the storage link once (DESIGN.md, "The cold
// burst").

#include <functional>
#include <string>
#include <vector>

#include "netloader/client.h"
#include "netloader/src/registry/record.h"
#include "netloader/src/stream/relay_feed.h"

namespace netloader::internal {

// "the registry at URL lists no holder of model M (tp r/s, pp r/s) that can serve now"
std::string NoHolder(const ClientOptions& options);

// How often a waiting instance asks the registry again.
inline constexpr std::chrono::milliseconds kColdStartPoll{250};

// Waits, up to options.cold_start_wait, until `discover` (the registry's holders, best first)
// lists a holder, and returns them. Meanwhile, whenever nobody holds the claim to read `wanted`
// from storage, `relay` (this load's, when it serves) claims it. Errors, each a reason for the
// host to read from storage itself: Unavailable when this instance claimed the read, or when
// nobody reads and this load cannot (no relay, cold_start_read false, or a relay listed in no
// registry), or etcd failed; Timeout when nobody served in time; Cancelled.
Result<std::vector<std::string>> WaitForColdStart(
    const ClientOptions& options, const registry::Wanted& wanted, RelayFeed* relay,
    const std::function<Result<std::vector<std::string>>()>& discover);

}  // namespace netloader::internal
