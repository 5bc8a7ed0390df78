// netloader-bench: measures netloader against raw MPI, disk and itself in one invocation, every
// figure a median over interleaved repetitions, every claim a ratio against a baseline measured in
// the same run (the machines are noisy). Each measurement runs in fresh processes, as a real load
// does. See BENCHMARKS.md.
//
// The same binary plays every part: without --role it orchestrates (local_bench.h, or
// hosts_bench.h, fanout_bench.h); with --role it is one of the processes being measured
// (roles.h) and prints one JSON line on stdout.

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdint>

#include "netloader/logging.h"
#include "netloader/server.h"
#include "tests/bench/fanout_bench.h"
#include "tests/bench/hosts_bench.h"
#include "tests/bench/local_bench.h"
#include "tests/bench/options.h"
#include "tests/bench/roles.h"

namespace {

using netloader::bench::Options;
using netloader::bench::RoleArgs;

// The orchestrator's flags, as --help lists them.
void AddBenchFlags(CLI::App& app, Options& o, double& chunk_mib) {
  app.add_flag("--quick", o.quick, "Small model, 2 repetitions: a smoke run under a minute");
  app.add_flag("--mpi-helpers", o.mpi_helpers,
               "Run netloader's MPI in netloader-mpi-helper processes "
               "(TransportOptions::mpi_helpers), to compare with MPI in process; raw MPI "
               "always runs in process");
  app.add_flag("--disk", o.disk,
               "Measure only disk loads: netloader reading the checkpoint into memory against "
               "cat from the page cache and dd bs=4M from a cold disk (evicted with "
               "POSIX_FADV_DONTNEED), paired");
  app.add_flag("--focus", o.focus,
               "Measure only raw MPI and netloader with MPI pre-started (for tuning runs)");
  app.add_option("--size-mib", o.size_mib, "Model size in MiB")->capture_default_str();
  app.add_option("--tensors", o.tensors, "Number of tensors")->capture_default_str();
  app.add_option("--reps", o.reps, "Repetitions")->check(CLI::Range(1, 100))->capture_default_str();
  app.add_option("--chunk-mib", chunk_mib, "Chunk size in MiB (netloader and raw MPI)")
      ->capture_default_str();
  app.add_option("--window", o.window, "Messages in flight (netloader and raw MPI)")
      ->capture_default_str();
  app.add_option("--json", o.json_path, "Write the results as JSON to this file");
  app.add_option("--checkpoint", o.checkpoint,
                 "Measure this checkpoint (a .safetensors file, or a directory of shards) instead "
                 "of generating one; --size-mib and --tensors are then ignored")
      ->check(CLI::ExistingPath);
  app.add_option("--workdir", o.workdir, "Where to put the checkpoints (default: a temp dir)");
}

// The flags of the benches across simulated hosts.
void AddHostsFlags(CLI::App& app, Options& o) {
  app.add_flag("--hosts", o.hosts,
               "Measure across simulated hosts instead (root only): three source hosts with NICs "
               "capped at --host-mbit and a client host with four times that, as network "
               "namespaces (scripts/netns-hosts.sh); raw MPI across one capped link, and netloader "
               "from 1, 2 and 3 sources at once (--stripe)");
  app.add_option("--host-mbit", o.host_mbit, "With --hosts: each source host's NIC, Mbit/s")
      ->check(CLI::Range(10, 100000))
      ->capture_default_str();
  app.add_flag("--fanout", o.fanout,
               "Measure relay fan-out instead (root only): one seed and K = 1, 2, 4, ... new "
               "instances started at once on simulated hosts whose NICs are all capped at "
               "--fanout-mbit; T(K)/T(1) and the seed's egress for relaying (netloader-client "
               "--serve), everyone from the seed, one shared storage host, and a cold burst "
               "through a registry (256 MiB model unless --size-mib is given)");
  app.add_option("--fanout-mbit", o.fanout_mbit, "With --fanout: every host's NIC, Mbit/s")
      ->check(CLI::Range(10, 100000))
      ->capture_default_str();
  app.add_option("--max-k", o.max_k,
                 "With --fanout: the largest K (at most 9 hosts besides the seed)")
      ->check(CLI::Range(1, 9))
      ->capture_default_str();
  app.add_option("--tree-fanout", o.tree_fanout,
                 "With --fanout: the seed's and every relay's --fanout in relay mode")
      ->check(CLI::Range(1, 8))
      ->capture_default_str();
  app.add_option("--modes", o.modes,
                 "With --fanout: which of relay, direct, storage, cold to measure (cold: no seed, "
                 "K instances with a registry on etcd, one reading the storage host and the "
                 "others loading from the burst)")
      ->check(CLI::IsMember({"relay", "direct", "storage", "cold"}))
      ->capture_default_str();
}

// Internal, hidden from --help: the processes being measured (role_command.h writes them).
void AddRoleFlags(CLI::App& app, RoleArgs& role, bool& no_verify) {
  app.add_option("--role", role.role)->group("");
  app.add_option("--rendezvous", role.rendezvous)->group("");
  app.add_option("--model", role.models)->group("");
  app.add_option("--source", role.sources)->group("");
  app.add_option("--kill-pid", role.kill_pid)->group("");
  app.add_option("--interface", role.interface)->group("");
  app.add_option("--listen", role.listen)->group("");
  app.add_option("--stripe", role.stripe)->group("");
  app.add_option("--delta-from", role.delta_from)->group("");
  app.add_option("--select", role.select)->group("");
  app.add_option("--port-file", role.port_file)->group("");
  app.add_option("--endpoint-file", role.endpoint_file)->group("");
  app.add_option("--start-file", role.start_file)->group("");
  app.add_option("--registry", role.registry)->group("");
  app.add_option("--relay-fanout", role.fanout)->group("");
  app.add_option("--peers", role.peers)->group("");
  app.add_flag("--preinit", role.preinit)->group("");
  app.add_flag("--overlap", role.overlap)->group("");
  app.add_flag("--cold", role.cold)->group("");
  app.add_flag("--direct", role.direct)->group("");
  app.add_flag("--no-verify", no_verify)->group("");
  app.add_option("--output", role.output)->group("");
  app.add_flag("--in-memory-output", role.in_memory_output)->group("");
  app.add_flag("--stop-at-half", role.stop_at_half)->group("");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "netloader-bench: netloader against raw MPI, disk and itself, in one run.\n"
      "Generates a Llama-shaped checkpoint, starts a rendezvous and a server, then measures in\n"
      "fresh processes, interleaved over repetitions: raw MPI (the ceiling), netloader end to\n"
      "end (with MPI started beforehand or not, checksums on or off), disk (warm and cold),\n"
      "K concurrent clients against K raw streams, fixed overhead by tensor count, and memory.\n"
      "Prints a table of medians and ratios; --json writes the same with every sample."};
  Options o;
  RoleArgs role;
  // The library's defaults, which is what users get.
  double chunk_mib = static_cast<double>(netloader::ServerOptions{}.chunk_bytes) / (1 << 20);
  bool no_verify = false;
  AddBenchFlags(app, o, chunk_mib);
  AddHostsFlags(app, o);
  AddRoleFlags(app, role, no_verify);
  CLI11_PARSE(app, argc, argv);
  o.chunk_bytes = static_cast<uint64_t>(std::llround(chunk_mib * (1 << 20)));
  role.chunk_bytes = o.chunk_bytes;
  role.window = o.window;
  role.verify = !no_verify;
  role.mpi_helpers = o.mpi_helpers;

  netloader::SetLogLevel(netloader::LogLevel::kWarn);
  if (!role.role.empty()) return netloader::bench::PlayRole(role);
  if (o.quick) {
    o.size_mib = 64;
    o.tensors = 300;
    o.reps = 2;
  }
  o.size_given = app.count("--size-mib") > 0;
  if (o.hosts) return netloader::bench::RunHostsBench(o);
  if (o.fanout) return netloader::bench::RunFanoutBench(o);
  return netloader::bench::RunLocalBench(o);
}
