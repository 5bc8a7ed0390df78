#pragma once

// Where a bench run lives and what all its processes share: a temporary directory (removed with
// everything in it at the end), the working directory, this binary, the secret and the MPI
// rendezvous; and, for the benches across simulated hosts, the hosts.

#include <memory>
#include <string>
#include <vector>

#include "tests/support/test_util.h"

namespace netloader::bench {

class Workspace {
 public:
  // Makes the temporary directory and points NETLOADER_SECRET_FILE, for this process and every
  // one it starts, at a secret in it: every role of a run shares one, as a real deployment does
  // (CURVE on the control plane is part of what is measured).
  explicit Workspace(const std::string& workdir);

  const std::string& self() const { return self_; }  // this binary
  const std::string& dir() const { return dir_; }    // --workdir, else the temporary directory

  // An MPI rendezvous (ompi-server) on `interface`, its URI and logs in the temporary directory;
  // dies when it does not start within 20 s.
  std::unique_ptr<testing::Rendezvous> StartRendezvous(const std::string& interface) const;

 private:
  testing::TempDir tmp_;
  std::string self_;
  std::string dir_;
};

// Simulated hosts with NICs capped at `rates` (tests/support/test_util.h; root only); dies
// saying why when they cannot be made.
std::unique_ptr<testing::Hosts> BuildHosts(const std::vector<std::string>& rates);

}  // namespace netloader::bench
