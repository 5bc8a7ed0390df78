#pragma once

// The processes being measured. netloader-bench started with --role plays one of them: it does
// its part once, prints one JSON line on stdout (its figures) and exits 0; any failure dies
// (fatal.h) with a line on stderr, and a crash says where (tests/support/test_util.h). Each
// role runs on the process's main thread.

#include <signal.h>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "netloader/server.h"
#include "netloader/transport.h"

namespace netloader::bench {

// A role's flags (role_command.h writes them).
struct RoleArgs {
  std::string role;
  std::string rendezvous;
  std::vector<std::string> models;
  std::vector<std::string> sources;
  std::string port_file;
  std::string endpoint_file;
  uint64_t chunk_bytes = ServerOptions{}.chunk_bytes;
  int window = 4;
  int peers = 1;
  bool verify = true;
  bool preinit = false;
  bool overlap = false;  // start MPI on a thread while allocating, as an engine should
  bool cold = false;
  bool direct = false;
  std::string interface = "lo";
  std::string listen;  // the serve role's endpoint (default: 127.0.0.1, a free port)
  int stripe = 1;
  pid_t kill_pid = 0;               // SIGKILLed once half the model is verified (the resume row)
  std::string delta_from;           // an older copy to start from (the delta row)
  std::vector<std::string> select;  // tensor patterns of a partial load (the partial row)
  std::string start_file;           // storage-read, cold-start: begin once this file exists
  std::string registry;             // cold-start: the etcd its burst coordinates through
  int fanout = ServerOptions{}.fanout;  // cold-start: its relay's ServerOptions::fanout
  bool mpi_helpers = false;             // TransportOptions::mpi_helpers
  // The output rows: load into this directory's files (MappedCheckpoint, resuming what is
  // there), or with in_memory_output into memory and then write them (the way before); with
  // stop_at_half, cancel the load at half, leaving the partial files.
  std::string output;
  bool in_memory_output = false;
  bool stop_at_half = false;
};

// Plays args.role: serve, load, disk (here), raw-send, raw-recv (raw_mpi_roles.h),
// storage-serve, storage-read, cold-start (storage_roles.h). Returns the exit status; dies on an
// unknown role.
int PlayRole(const RoleArgs& args);

// For the roles themselves:

// The data plane every role of a run shares: its rendezvous, on its interface.
TransportOptions Transport(const RoleArgs& args);

// Writes `text` to `path` at once (a temporary file renamed), so that a process polling `path`
// never reads half of it.
void PublishFile(const std::string& path, const std::string& text);

// SIGTERM blocked on construction, so that Wait() takes it however early it comes: how a
// serving role learns that the run is over. Construct it on the main thread before any other
// thread starts: threads inherit the blocked mask, and a thread that does not block SIGTERM
// would take the signal's default action (the process dies) instead.
class Termination {
 public:
  Termination();
  void Wait();

 private:
  sigset_t set_;
};

}  // namespace netloader::bench
