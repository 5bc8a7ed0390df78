#pragma once

#include <memory>
#include <string>

#include "netloader/transport_options.h"
#include "transfer/transport.h"

namespace netloader::transfer {

// Tuning of the MPI streaming loop.
struct MpiTuning {
  // Sleep between polls once a few immediate MPI_Test calls found nothing done. Keeps waiting
  // threads from spinning a core (DESIGN.md: busy-polling threads starve the transfer).
  std::chrono::microseconds poll_interval{50};
};

// Initialises MPI for this process on first use, following DESIGN.md's recipe: pml ucx over TCP
// on options.interface, connect/accept through a shared rendezvous (ompi-server). When
// `rendezvous_uri` and options.rendezvous_uri are both empty, starts a private ompi-server (a
// child that dies with this process). MPI is initialised once per process; a later call asking
// for a different rendezvous fails with InvalidArgument naming both. Errors: Unavailable (MPI or
// ompi-server failed), Timeout (start-up deadline).
Result<std::shared_ptr<Transport>> MakeMpiTransport(const TransportOptions& options,
                                                    const std::string& rendezvous_uri = "",
                                                    MpiTuning tuning = {});

// Reads "file:PATH" rendezvous specs to the URI inside; returns other strings unchanged.
Result<std::string> ResolveRendezvous(const std::string& spec);

// The rendezvous URI this process initialised MPI with; empty before MakeMpiTransport succeeded.
std::string CurrentMpiRendezvous();

}  // namespace netloader::transfer
