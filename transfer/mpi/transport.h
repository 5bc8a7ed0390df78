#pragma once

#include <memory>
#include <string>

#include "netloader/transport.h"
#include "transfer/transport.h"

namespace netloader::transfer {

// The MPI data plane (DESIGN.md's recipe, PROTOCOL.md section 7): initialises MPI for this
// process on first use (mpi_runtime.h) and returns a transport over it. `rendezvous_uri` is the
// one a peer named (a client adopting its source's); when it and options.rendezvous_uri are both
// empty a private ompi-server is started. Errors: InvalidArgument (the two rendezvous differ, or
// MPI is already bound to another), Unavailable, Timeout, NotFound (a rendezvous file missing).
Result<std::shared_ptr<Transport>> MakeMpiTransport(const TransportOptions& options,
                                                    const std::string& rendezvous_uri = "");

// The MPI data plane configured by `options`: in helper processes (helper/transport.h) when
// options.mpi_helpers is set and the host has not initialised MPI itself; else in this process,
// where Start is MakeMpiTransport.
std::shared_ptr<DataPlane> MakeMpiDataPlane(const TransportOptions& options);

}  // namespace netloader::transfer
