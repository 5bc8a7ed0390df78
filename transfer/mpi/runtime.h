#pragma once

// Open MPI in this process (DESIGN.md's recipe): initialised once, on first use, and never torn
// down before exit; what is known of its health; and the bookkeeping that keeps exit safe.

#include <chrono>
#include <string>

#include "netloader/status.h"
#include "netloader/transport.h"

namespace netloader::transfer {

// How long MPI_Open_port may take before MPI counts as not answering.
inline constexpr std::chrono::seconds kOpenPortTimeout{10};

// Initialises MPI for this process if it is not yet: pml ucx over TCP on options.interface,
// connect/accept through the rendezvous `rendezvous_spec` (an URI or file:PATH; empty: a private
// ompi-server, a child that dies with this process). A host that initialised MPI itself keeps
// it (it must provide MPI_THREAD_MULTIPLE). Once initialised, asking for another rendezvous fails
// with InvalidArgument naming both. Errors: Unavailable (MPI or ompi-server failed), Timeout
// (options.startup_timeout), NotFound (a rendezvous file missing).
Status EnsureMpi(const TransportOptions& options, const std::string& rendezvous_spec);

// The rendezvous URI this process initialised MPI with; empty before EnsureMpi succeeded (also
// while another thread is inside it: this never waits for start-up).
std::string CurrentMpiRendezvous();

// Sets the Open MPI / UCX settings of DESIGN.md's recipe (pml ucx over TCP on
// options.interface) in the environment, keeping any the user already set. Before MPI_Init.
void SetMpiTuningEnvironment(const TransportOptions& options);

// OK while MPI can serve new peers; Unavailable with the reason once it cannot: the private
// rendezvous exited, MPI_Open_port stopped returning, or the rendezvous does not answer (probed
// with a TCP connect; a failed probe stands for a second).
Status MpiHealth();

// "WHAT failed: <MPI's error string>" as TransferFailed.
Status MpiFailure(const std::string& what, int rc);

// A call into MPI was left running past its deadline: MPI_Finalize is then skipped at exit,
// which would abort the process with such a call still inside MPI.
void NoteAbandonedCall();
// MPI_Open_port did not return in time: MPI is not answering (MpiHealth says so from then on).
void NotePortsStuck();
// MPI ports open in this process: each admitted client gets one until its session ends; a port
// whose accept was abandoned past its deadline stays open. For tests and diagnostics.
void NotePortOpened();
void NotePortClosed();
int OpenMpiPorts();

}  // namespace netloader::transfer
