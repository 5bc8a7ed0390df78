#pragma once

#include <memory>
#include <string>

#include "netloader/transport_options.h"
#include "transfer/transport.h"

namespace netloader::transfer {

// Tuning of the MPI streaming loop.
struct MpiTuning {
  // How long the progress thread sleeps once a few immediate MPI_Testsome calls found nothing
  // done. Chosen by measurement (netloader-bench --focus, 512 MiB, 2 cores, ratio to raw MPI):
  // spinning 64%, 10 us 64%, 50 us 79-86%, 100 us 101%, 200 us 83% (noise about +-10%).
  std::chrono::microseconds poll_interval{100};
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

// MPI ports this process has open (each admitted client gets one until its session ends; a port
// whose accept was abandoned past its deadline stays open). For tests and diagnostics.
int OpenMpiPorts();

// Sets the Open MPI / UCX settings of DESIGN.md's recipe (pml ucx over TCP on
// options.interface) in the environment, keeping any the user already set. Before MPI_Init.
void SetMpiTuningEnvironment(const TransportOptions& options);

}  // namespace netloader::transfer
