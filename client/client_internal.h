#pragma once

#include <functional>
#include <memory>
#include <string>

#include "netloader/client.h"
#include "transfer/transport.h"

namespace netloader::internal {

// Makes the data plane once the source has named its rendezvous (MPI in production).
using TransportFactory =
    std::function<Result<std::shared_ptr<transfer::Transport>>(const std::string& rendezvous)>;

// Switches that exist for measurement only; never exposed in the public API.
struct LoadTuning {
  // false skips per-chunk digest checks (the benchmark's "checksums off" row). A load done so
  // is not verified and must not be used.
  bool verify_chunks = true;
};

// Load with a given data plane (tests use the in-process and fault-injecting transports).
Result<LoadStats> Load(const ClientOptions& options, const ModelView& destination,
                       const TransportFactory& transport, LoadTuning tuning = {});

}  // namespace netloader::internal
