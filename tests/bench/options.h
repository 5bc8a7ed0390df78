#pragma once

// What the orchestrator measures and how: netloader-bench's flags (main.cpp maps them here),
// with the library's own defaults, which is what users get.

#include <cstdint>
#include <string>
#include <vector>

#include "netloader/client.h"
#include "netloader/server.h"

namespace netloader::bench {

struct Options {
  bool quick = false;
  bool focus = false;  // only raw MPI and netloader (MPI pre-started, checksums on and off)
  bool disk = false;   // only the disk rows: netloader's disk load against cat and dd
  double size_mib = 1024;
  int tensors = 2000;
  int reps = 5;
  uint64_t chunk_bytes = ServerOptions{}.chunk_bytes;
  int window = ClientOptions{}.window;
  std::string json_path;
  std::string workdir;
  std::string checkpoint;  // measure this checkpoint instead of a generated one
  bool hosts = false;      // measure across simulated hosts instead (hosts_bench.h)
  int host_mbit = 500;     // each source host's NIC
  bool fanout = false;     // relay fan-out across simulated hosts instead (fanout_bench.h)
  int fanout_mbit = 400;   // every host's NIC in the fan-out row
  int max_k = 8;           // instances started at once: 1, 2, 4, ... up to this
  std::vector<std::string> modes = {"relay", "direct", "storage", "cold"};
  int tree_fanout = ServerOptions{}.fanout;  // relay mode: every server's --fanout
  bool size_given = false;
  bool mpi_helpers = false;  // netloader's MPI in helper processes (TransportOptions)
};

}  // namespace netloader::bench
