#pragma once

#include <functional>
#include <memory>
#include <string>

#include "netloader/client.h"
#include "netloader/src/stream/chunk_stream.h"
#include "transfer/transport.h"

namespace netloader::internal {

// Load on a given data plane (Load: MPI; tests: the in-process one, and fault-injecting
// wrappers). `receiving` other than the default is for measurement only: a load that does not
// verify its chunks must not be used.
Result<LoadStats> Load(const ClientOptions& options, const ModelView& destination,
                       transfer::DataPlane& plane, ReceiveOptions receiving = {});

}  // namespace netloader::internal
