#pragma once

// A client's side of the registry: the holders it can load from (DESIGN.md, "The registry").

#include <string>
#include <vector>

#include "netloader/src/registry/etcd.h"
#include "netloader/src/registry/record.h"

namespace netloader::registry {

// The endpoints `wanted` can load from, best first (Choose), as the registry at `url` lists
// them. A record that does not parse, or is of another version, is skipped with a warning naming
// its key. While etcd cannot be reached, the records this process last read from `url` stand
// in (with a warning saying so). Errors: InvalidArgument (a bad URL); Unavailable or Timeout
// when etcd cannot be reached and this process never read it.
Result<std::vector<std::string>> Discover(const std::string& url, const Wanted& wanted,
                                          Clock::time_point deadline);

// Who holds the claim `name` (a key under the registry's prefix) at `url`: the value the claimer
// wrote (its endpoint), or empty when nobody does. Errors: InvalidArgument (a bad URL), etcd's.
Result<std::string> ClaimHolder(const std::string& url, const std::string& name,
                                Clock::time_point deadline);

}  // namespace netloader::registry
