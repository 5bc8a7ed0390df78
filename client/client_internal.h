#pragma once

#include <functional>
#include <memory>
#include <string>

#include "netloader/client.h"
#include "transfer/transport.h"

namespace netloader::internal {

// Switches that exist for measurement only; never exposed in the public API.
struct LoadTuning {
  // false skips per-chunk digest checks (the benchmark's "checksums off" row). A load done so
  // is not verified and must not be used.
  bool verify_chunks = true;
};

// Load on a given data plane (Load: MPI; tests: the in-process one, and fault-injecting
// wrappers).
Result<LoadStats> Load(const ClientOptions& options, const ModelView& destination,
                       transfer::DataPlane& plane, LoadTuning tuning = {});

}  // namespace netloader::internal
