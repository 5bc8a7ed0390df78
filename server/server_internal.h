#pragma once

#include <memory>

#include "netloader/server.h"
#include "transfer/transport.h"

namespace netloader::internal {

// Server::Start with a given data plane instead of MPI (tests use the in-process transport and
// fault-injecting wrappers).
Result<std::unique_ptr<Server>> StartServer(ServerOptions options, ModelView model,
                                            std::shared_ptr<transfer::Transport> transport);

}  // namespace netloader::internal
