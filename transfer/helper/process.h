#pragma once

// One MPI helper process as its host sees it: started (netloader-mpi-helper, found next to
// libnetloader), asked over its main socket, and reaped or killed.

#include <sys/types.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "netloader/status.h"
#include "netloader/transport.h"
#include "transfer/helper/link.h"

namespace netloader::transfer::helper {

// The helper executable: $NETLOADER_MPI_HELPER, else netloader-mpi-helper next to the library
// (or executable) netloader is linked into, in ../libexec or ../bin beside it, else on PATH.
std::string HelperExecutable();

// Thread-safe.
class Process {
 public:
  // Starts a helper whose MPI uses `rendezvous_spec` (an URI or file:PATH; empty: a private
  // ompi-server of its own) and waits until its MPI is up, until options.startup_timeout.
  // Errors: Unavailable (it could not start or said why not), Timeout, NotFound.
  static Result<std::shared_ptr<Process>> Start(const TransportOptions& options,
                                                const std::string& rendezvous_spec);
  // Closes the main socket (the helper then leaves MPI and exits) and reaps it in the
  // background, killing it if it has not exited within a few seconds.
  ~Process();

  pid_t pid() const { return pid_; }
  const std::string& rendezvous() const { return rendezvous_; }
  const std::string& spec() const { return spec_; }

  // OK while the helper runs; else Unavailable saying how it ended (exit code or signal).
  Status Alive();
  // The helper's own view of its MPI (its MpiHealth). A helper that does not answer within
  // kAnswerTimeout is killed. Errors: Unavailable.
  Status Health();
  // A new socket to a thread of its own in the helper, for one listener or channel.
  Result<Link> Open();
  // SIGKILLs the helper and reaps it: nothing it was doing continues.
  void Kill();

  // Sessions handed out (for recycling): incremented by the transport that owns it.
  int sessions = 0;

 private:
  Process() = default;
  Status Request(const Message& request, int pass_fd);  // on main_, with mu_ held
  void ReapLocked(bool block);

  std::mutex mu_;  // guards main_, exited_, ended_
  Link main_;
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string ended_;  // how it ended, once it has
  std::string rendezvous_;
  std::string spec_;
};

}  // namespace netloader::transfer::helper
