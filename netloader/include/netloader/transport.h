#pragma once

// The data plane a process's servers and clients share: how it is reached, and starting it.

#include <chrono>
#include <string>

#include "netloader/export.h"
#include "netloader/status.h"

namespace netloader {

// How the MPI data plane is reached. See docs/usage.md, "How the MPI connection is made".
struct TransportOptions {
  // The Open MPI rendezvous (an `ompi-server` URI, or "file:PATH" of the file it wrote) that
  // every peer of this process must share. Empty: a server starts a private ompi-server and
  // hands its URI to clients in the Accept reply; a client adopts the URI its source sends.
  // Fixed for the life of the process once MPI is initialised.
  std::string rendezvous_uri;
  // Network interface MPI and the private rendezvous use ("lo" for one host).
  std::string interface = "lo";
  // The ompi-server executable used for a private rendezvous.
  std::string ompi_server = "ompi-server";
  // Deadline for a private rendezvous to start and for MPI to initialise.
  std::chrono::milliseconds startup_timeout{20000};
  // Run MPI in netloader-mpi-helper processes that netloader starts, restarts and recycles
  // itself, never in this process (docs/usage.md, "How the MPI connection is made"): no shared
  // rendezvous is needed, a crash in MPI costs only the transfers it carried, and a server's
  // memory stays flat. Off by default for now: on 2-core VMs a load runs at 2/3 to 3/4 of the speed
  // of MPI in process (BENCHMARKS.md). Ignored by a host that initialised MPI itself.
  bool mpi_helpers = false;
};

// Initialises the MPI data plane now, so that a later Load or Server::Start does not pay for it.
// Needs a shared rendezvous (options.rendezvous_uri): MPI's rendezvous is fixed at start-up.
// Errors: InvalidArgument (no rendezvous given, or MPI already bound to another), Unavailable,
// Timeout.
NETLOADER_EXPORT Status InitializeTransport(const TransportOptions& options);

// For hosts that call MPI_Init themselves, such as the ranks of an instance started by
// `mpirun --ompi-server file:PATH -np N` (PATH being the rendezvous every instance shares, also
// given as TransportOptions::rendezvous_uri). Call before MPI_Init: sets the Open MPI settings
// netloader's data plane needs (pml ucx over TCP on options.interface), keeping any the user has
// already set. Then initialise MPI with MPI_THREAD_MULTIPLE; netloader uses it as it is.
NETLOADER_EXPORT void PrepareMpiEnvironment(const TransportOptions& options);

}  // namespace netloader
