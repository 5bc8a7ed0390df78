#pragma once

// The MPI data plane in helper processes (DESIGN.md, "MPI in helper processes"): the host never
// initialises MPI; each runtime lives in a netloader-mpi-helper process that moves bytes
// straight into and out of the host's shared memory (or a shared staging ring), and that the
// host restarts, recycles or kills without harm to itself.

#include <memory>

#include "netloader/transport.h"
#include "transfer/transport.h"

namespace netloader::transfer::helper {

// A server's helper is replaced after this many sessions, so that what MPI keeps per connected
// peer (PMIx: ~31 KiB each) never grows without bound.
inline constexpr int kSessionsPerHelper = 100;

// The helper data plane configured by `options`. Clients get a helper per source rendezvous
// (reused from a small idle pool), servers one of their own that is restarted when it dies or
// stops answering and replaced every kSessionsPerHelper sessions.
std::shared_ptr<DataPlane> MakeHelperDataPlane(const TransportOptions& options);

// Starts a helper bound to options.rendezvous_uri into the idle pool, so that the first load
// from a source on that rendezvous does not pay for MPI start-up.
Status PrestartHelper(const TransportOptions& options);

}  // namespace netloader::transfer::helper
