// A stand-in for an inference engine: loads a checkpoint, starts netloader::Server over it, and
// keeps running its own loop (a counter ticking every millisecond) while clients load from it.
// On SIGTERM it stops and prints one JSON line about its loop:
//   {"iterations":N,"iterations_during_transfer":M,"max_gap_ms":G,"served":S}
// Usage: host_loop_server CHECKPOINT ENDPOINT_FILE

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "netloader/safetensors.h"
#include "netloader/secret.h"
#include "netloader/server.h"

namespace {
std::atomic<bool> stop{false};
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  signal(SIGTERM, [](int) { stop = true; });
  auto layout = netloader::ReadCheckpointLayout(argv[1]);
  if (!layout.ok()) return 3;
  auto model = netloader::HostModel::Load(*layout);
  if (!model.ok()) return 3;
  netloader::ServerOptions options;
  auto secret = netloader::LoadOrCreateSecret(netloader::DefaultSecretPath());  // as the CLIs
  if (!secret.ok()) return 2;
  options.secret = *secret;
  auto server = netloader::Server::Start(options, model->view());
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 4;
  }
  std::ofstream(std::string(argv[2]) + ".tmp") << (*server)->endpoint() << "\n";
  std::rename((std::string(argv[2]) + ".tmp").c_str(), argv[2]);

  using Clock = std::chrono::steady_clock;
  uint64_t iterations = 0, during_transfer = 0;
  double max_gap_ms = 0;
  auto last = Clock::now();
  while (!stop) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the engine's own work
    const auto now = Clock::now();
    const double gap = std::chrono::duration<double, std::milli>(now - last).count();
    last = now;
    ++iterations;
    if ((*server)->stats().active_transfers > 0) {
      ++during_transfer;
      if (gap > max_gap_ms) max_gap_ms = gap;
    }
  }
  (*server)->Stop();  // retires every session: the stats are final
  const auto stats = (*server)->stats();
  std::printf(
      "{\"iterations\":%llu,\"iterations_during_transfer\":%llu,\"max_gap_ms\":%.1f,"
      "\"served\":%llu}\n",
      static_cast<unsigned long long>(iterations), static_cast<unsigned long long>(during_transfer),
      max_gap_ms, static_cast<unsigned long long>(stats.clients_served));
  return 0;
}
