#pragma once

// The orchestrator's side of the roles (roles.h): their command lines, and running them.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/test_util.h"

namespace netloader::bench {

// `--chunk-mib`'s value for a child process, exact for any byte count.
std::string ChunkMibArgument(uint64_t chunk_bytes);

// What every role of a run is started with.
struct RoleCommand {
  std::string self;        // this binary
  std::string rendezvous;  // --rendezvous: the run's MPI rendezvous; empty: none given
  uint64_t chunk_bytes = 0;
  int window = 0;
  std::string interface;     // --interface when set (simulated hosts); the roles' default: "lo"
  bool mpi_helpers = false;  // --mpi-helpers

  // `self --role ROLE` and the settings above.
  std::vector<std::string> Argv(const std::string& role) const;
};

// How a load row's client starts and what it loads: MPI beforehand (preinit), while it
// allocates (overlap), or inside the load; with the rendezvous configured or learnt from the
// source (adopt). The defaults: checksums on, MPI started beforehand, the whole model.
struct LoadKind {
  bool verify = true;
  bool preinit = true;
  bool direct = false;
  bool overlap = false;
  bool adopt = false;
  int stripe = 1;                   // sources read from at once
  pid_t kill_pid = 0;               // killed at half the load
  std::string delta_from;           // an older copy to refresh
  std::vector<std::string> select;  // a partial load's tensor patterns
  std::string output;               // load into this directory's files (RoleArgs::output)
  bool in_memory_output = false;
  bool stop_at_half = false;
};

// A load role of `model` from `sources` (tried in order, or striped), as `kind` says.
std::vector<std::string> LoadArgv(const RoleCommand& command, const std::string& model,
                                  const std::vector<std::string>& sources, const LoadKind& kind);

// The raw MPI pair (raw_mpi_roles.h): a sender to `peers` receivers, and the receiver of port
// file `port_file`.`index`.
std::vector<std::string> RawSendArgv(const RoleCommand& command, const std::string& model,
                                     const std::string& port_file, int peers);
std::vector<std::string> RawRecvArgv(const RoleCommand& command, const std::string& model,
                                     const std::string& port_file, int index);

// Runs `argv` to its end (at most `timeout`), logs at `log_prefix`, and returns its JSON line.
// The whole run dies, naming `name`, its exit status and its stderr (a crash trace resolved),
// when it exits otherwise.
nlohmann::json RunRoleChild(const std::vector<std::string>& argv, const std::string& log_prefix,
                            const std::string& name, std::chrono::seconds timeout);

// A running serve role and the endpoints it printed, one per model in order.
struct ServeRole {
  std::unique_ptr<testing::Child> child;
  std::vector<std::string> endpoints;
};

// Starts a serve role of `models` with `extra` flags, its endpoint file, pid file and logs in
// directory `dir` (made; a stale endpoint file removed), run through `place` (e.g. on a
// simulated host). Waits up to 120 s for its endpoints; dies, naming `name`, when none come.
ServeRole StartServeRole(
    const RoleCommand& command, const std::string& dir, const std::vector<std::string>& models,
    const std::vector<std::string>& extra, const std::string& name,
    const std::function<std::vector<std::string>(std::vector<std::string>)>& place = nullptr);

}  // namespace netloader::bench
