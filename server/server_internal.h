#pragma once

#include <memory>

#include "netloader/server.h"
#include "transfer/transport.h"

namespace netloader::internal {

// Server::Start (or, with `relay`, Server::StartRelay) on a given data plane (MPI; tests: the
// in-process one, and fault-injecting wrappers).
Result<std::unique_ptr<Server>> StartServer(ServerOptions options, ModelView model,
                                            const std::shared_ptr<transfer::DataPlane>& plane,
                                            bool relay = false);

}  // namespace netloader::internal
