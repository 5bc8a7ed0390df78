#include "transfer/mpi/runtime.h"

#include <mpi.h>

#include <atomic>
#include <cstdlib>
#include <mutex>

#include "transfer/call_with_deadline.h"
#include "transfer/mpi/rendezvous.h"

namespace netloader::transfer {
namespace {

std::string MpiErrorString(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
  return std::string(text, len);
}

using Clock = std::chrono::steady_clock;

// Process-wide MPI state. Initialised once; never torn down before exit.
struct Runtime {
  std::mutex mu;                     // held through start-up; guards every field below
  std::mutex bound_mu;               // guards `bound` only, never held for long
  std::string bound;                 // `rendezvous` once initialised: what peers are told
  bool initialised = false;          // MPI is usable by netloader
  Status broken;                     // set when MPI start-up failed: MPI is unusable for good
  std::string rendezvous;            // resolved URI shared by all peers of this process
  PrivateRendezvous private_server;  // when this process started one
  std::atomic<int> abandoned{0};     // MPI calls left running past their deadline
  std::atomic<int> open_ports{0};    // MPI_Open_port minus MPI_Close_port
  std::atomic<bool> ports_stuck{false};
  std::mutex probe_mu;  // guards the two fields below
  Clock::time_point probed{};
  Status rendezvous_health;
};

Runtime& GetRuntime() {
  static Runtime* runtime = new Runtime();  // outlives detached threads at exit
  return *runtime;
}

void FinalizeAtExit() {
  // MPI_Finalize while another thread is still inside MPI_Comm_connect/accept aborts the process
  // (seen: a double free in ompi_comm_finalize). Such calls were abandoned past their deadline;
  // then skip finalisation: the process is exiting and the OS reclaims everything.
  if (GetRuntime().abandoned.load() > 0) return;
  // A dead rendezvous can make MPI_Finalize wait forever; bound it.
  auto finalize = CallWithDeadline<int>("MPI_Finalize", Clock::now() + std::chrono::seconds(5),
                                        []() -> Result<int> { return MPI_Finalize(); });
  (void)finalize;
}

// hwloc's PCI and I/O discovery reads every PCI device's configuration space through sysfs, and
// on a VM each 4-byte read traps to the hypervisor: about 25 of MPI_Init's ~85 ms (AMD EPYC,
// AVX-512), paid in this process and again in the orted daemon it forks (and in a private
// ompi-server). MPI over TCP uses none of it. So, unless the user set HWLOC_COMPONENTS, it excludes
// that discovery while this process starts MPI, and is removed again afterwards so that the host's
// own later uses of hwloc see the default.
class HwlocWithoutIo {
 public:
  HwlocWithoutIo() : set_(std::getenv("HWLOC_COMPONENTS") == nullptr) {
    if (set_) setenv("HWLOC_COMPONENTS", "-pci,-linuxio", 0);
  }
  ~HwlocWithoutIo() {
    if (set_) unsetenv("HWLOC_COMPONENTS");
  }
  HwlocWithoutIo(const HwlocWithoutIo&) = delete;
  HwlocWithoutIo& operator=(const HwlocWithoutIo&) = delete;
  // Leaves the setting in place: an abandoned MPI_Init may still be reading the environment.
  void Keep() { set_ = false; }

 private:
  bool set_;
};

void SetMpiEnvironment(const TransportOptions& options, const std::string& rendezvous) {
  // The rendezvous is what the caller configured: it must win.
  setenv("OMPI_MCA_pmix_server_uri", rendezvous.c_str(), 1);
  SetMpiTuningEnvironment(options);
  setenv("OMPI_MCA_plm", "isolated", 0);
}

}  // namespace

Status MpiFailure(const std::string& what, int rc) {
  return Status(StatusCode::kTransferFailed, what + " failed: " + MpiErrorString(rc));
}

Status EnsureMpi(const TransportOptions& options, const std::string& wanted_spec) {
  Runtime& rt = GetRuntime();
  std::lock_guard<std::mutex> lock(rt.mu);
  std::string wanted;
  if (!wanted_spec.empty()) {
    Result<std::string> resolved = ResolveRendezvous(wanted_spec);
    if (!resolved.ok()) return resolved.status();
    wanted = *resolved;
  }
  if (!rt.broken.ok()) return rt.broken;
  if (rt.initialised) {
    if (!wanted.empty() && wanted != rt.rendezvous) {
      return Status(StatusCode::kInvalidArgument, "MPI in this process already uses rendezvous '" +
                                                      rt.rendezvous + "'; cannot also use '" +
                                                      wanted + "' (one rendezvous per process)");
    }
    return Status::Ok();
  }
  int already = 0;
  MPI_Initialized(&already);
  if (already) {
    // The host initialised MPI; it must also have set up the rendezvous it names.
    int provided = 0;
    MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_MULTIPLE) {
      return Status(StatusCode::kUnavailable,
                    "the host initialised MPI without MPI_THREAD_MULTIPLE, which netloader's "
                    "background threads need");
    }
    rt.rendezvous = wanted;
  } else {
    HwlocWithoutIo quick_topology;  // for the private ompi-server, MPI_Init and its orted
    if (wanted.empty()) {
      Result<PrivateRendezvous> started = StartPrivateRendezvous(options);
      if (!started.ok()) return started.status();
      rt.private_server = *started;
      wanted = started->uri;
    }
    SetMpiEnvironment(options, wanted);
    // An unreachable rendezvous can make MPI_Init wait forever: bound it like every other call.
    Result<int> provided = CallWithDeadline<int>(
        "MPI_Init_thread", Clock::now() + options.startup_timeout, []() -> Result<int> {
          int level = 0;
          int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &level);
          if (rc != MPI_SUCCESS) return MpiFailure("MPI_Init_thread", rc);
          return level;
        });
    if (!provided.ok()) {
      const bool timed_out = provided.status().code() == StatusCode::kTimeout;
      // A half-initialised MPI cannot be retried or finalised: every later use fails with this.
      if (timed_out) {
        rt.abandoned++;
        quick_topology.Keep();
      }
      rt.broken = Status(
          timed_out ? StatusCode::kTimeout : StatusCode::kUnavailable,
          "MPI start-up with rendezvous '" + wanted + "' failed: " + provided.status().message());
      return rt.broken;
    }
    if (*provided < MPI_THREAD_MULTIPLE) {
      return Status(StatusCode::kUnavailable, "MPI does not provide MPI_THREAD_MULTIPLE");
    }
    rt.rendezvous = wanted;
    std::atexit(FinalizeAtExit);
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  rt.initialised = true;
  std::lock_guard<std::mutex> bound(rt.bound_mu);
  rt.bound = rt.rendezvous;
  return Status::Ok();
}

Status MpiHealth() {
  Runtime& rt = GetRuntime();
  if (rt.private_server.exited && rt.private_server.exited->load()) {
    return Status(StatusCode::kUnavailable, "the private MPI rendezvous (ompi-server pid " +
                                                std::to_string(rt.private_server.pid) + ") exited");
  }
  if (rt.ports_stuck.load()) {
    return Status(StatusCode::kUnavailable,
                  "MPI stopped answering (MPI_Open_port did not return within " +
                      std::to_string(kOpenPortTimeout.count()) + " s)");
  }
  // A dead rendezvous (a shared ompi-server that was stopped) would leave every connect and
  // accept waiting until its deadline: MPI cannot tell. So it is probed before every admission
  // (one TCP connect), except that a failed probe stands for a second: a flood of clients
  // against a dead, possibly unreachable rendezvous costs one 500 ms probe a second.
  std::lock_guard<std::mutex> lock(rt.probe_mu);
  if (rt.rendezvous_health.ok() || Clock::now() - rt.probed > std::chrono::seconds(1)) {
    rt.rendezvous_health = ProbeRendezvous(CurrentMpiRendezvous(), std::chrono::milliseconds(500));
    rt.probed = Clock::now();
  }
  return rt.rendezvous_health;
}

std::string CurrentMpiRendezvous() {
  // Not rt.mu: a client registers while another thread is inside MPI start-up.
  Runtime& rt = GetRuntime();
  std::lock_guard<std::mutex> lock(rt.bound_mu);
  return rt.bound;
}

void NoteAbandonedCall() { GetRuntime().abandoned++; }
void NotePortsStuck() { GetRuntime().ports_stuck = true; }
void NotePortOpened() { GetRuntime().open_ports++; }
void NotePortClosed() { GetRuntime().open_ports--; }
int OpenMpiPorts() { return GetRuntime().open_ports.load(); }

void SetMpiTuningEnvironment(const TransportOptions& options) {
  // DESIGN.md's measured recipe; a user may override any of it through the environment.
  setenv("OMPI_MCA_pml", "ucx", 0);
  setenv("OMPI_MCA_pml_ucx_tls", "any", 0);
  setenv("OMPI_MCA_pml_ucx_devices", "any", 0);
  setenv("OMPI_MCA_osc", "^ucx", 0);
  setenv("UCX_TLS", "tcp", 0);
  setenv("UCX_NET_DEVICES", options.interface.c_str(), 0);
  setenv("OMPI_MCA_btl_tcp_if_include", options.interface.c_str(), 0);
  setenv("OMPI_MCA_oob_tcp_if_include", options.interface.c_str(), 0);
}

}  // namespace netloader::transfer
