#pragma once

// The Open MPI rendezvous (an `ompi-server`) through which processes that no single mpirun
// started connect to each other (DESIGN.md, "MPI recipe"): reading a "file:PATH" spec, checking
// that one answers, and starting a private one.

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "netloader/status.h"
#include "netloader/transport.h"

namespace netloader::transfer {

// Reads "file:PATH" rendezvous specs to the URI inside; returns other strings unchanged.
// Errors: NotFound (the file is missing or empty).
Result<std::string> ResolveRendezvous(const std::string& spec);

// Whether anything accepts TCP connections at the first tcp://HOST:PORT of an ompi-server URI
// ("JOBID.VPID;tcp://HOST[,HOST...]:PORT..."), within `timeout`. OK for URIs without one.
// Errors: Unavailable naming HOST:PORT and why.
Status ProbeRendezvous(const std::string& uri, std::chrono::milliseconds timeout);

// An ompi-server started by this process: a child that dies with it (SIGKILL on parent death).
struct PrivateRendezvous {
  std::string uri;
  pid_t pid = -1;
  std::shared_ptr<std::atomic<bool>> exited;  // set when the child has exited
};

// Starts `options.ompi_server` on `options.interface` and waits (up to options.startup_timeout)
// for it to write its URI. Errors: Unavailable (it could not start, or exited saying why),
// Timeout.
Result<PrivateRendezvous> StartPrivateRendezvous(const TransportOptions& options);

}  // namespace netloader::transfer
