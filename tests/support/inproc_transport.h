#pragma once

#include <memory>

#include "transfer/transport.h"

namespace netloader::transfer {

// A Transport whose peers live in the same process and exchange chunks through bounded in-memory
// queues (one copy per side). Same contract as the MPI transport; used by unit tests so the
// control plane can be exercised without MPI, and as the base for fault injection.
std::shared_ptr<Transport> MakeInprocTransport();

// A data plane whose Start always returns `transport` and that is bound to no rendezvous.
std::shared_ptr<DataPlane> MakeInprocDataPlane(std::shared_ptr<Transport> transport);

}  // namespace netloader::transfer
