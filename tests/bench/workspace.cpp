#include "tests/bench/workspace.h"

#include <cstdlib>
#include <filesystem>

#include "tests/bench/fatal.h"

namespace netloader::bench {

Workspace::Workspace(const std::string& workdir)
    : self_(std::filesystem::read_symlink("/proc/self/exe").string()),
      dir_(workdir.empty() ? tmp_.path() : workdir) {
  setenv("NETLOADER_SECRET_FILE", (tmp_.path() + "/secret").c_str(), 1);
}

std::unique_ptr<testing::Rendezvous> Workspace::StartRendezvous(
    const std::string& interface) const {
  auto rendezvous = std::make_unique<testing::Rendezvous>(tmp_, interface);
  if (!rendezvous->ready()) {
    Die("ompi-server did not start on " + interface + ": " + rendezvous->child().Stderr());
  }
  return rendezvous;
}

std::unique_ptr<testing::Hosts> BuildHosts(const std::vector<std::string>& rates) {
  auto hosts = std::make_unique<testing::Hosts>(rates);
  if (!hosts->ok()) Die("cannot build simulated hosts (root needed): " + hosts->why());
  return hosts;
}

}  // namespace netloader::bench
