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

// Load with a given data plane (tests use the in-process and fault-injecting transports).
Result<LoadStats> Load(const ClientOptions& options, const ModelView& destination,
                       const TransportFactory& transport);

}  // namespace netloader::internal
