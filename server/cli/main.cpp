// netloader-server: loads a safetensors checkpoint into memory and serves it to netloader
// clients until SIGINT or SIGTERM.

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "netloader/safetensors.h"
#include "netloader/server.h"
#include "server/cli/cli_common.h"

using namespace netloader;

namespace {

// --model, read into memory, saying how long that took.
Result<HostModel> LoadModel(const std::string& path) {
  const auto start = std::chrono::steady_clock::now();
  Result<CheckpointLayout> layout = ReadCheckpointLayout(path);
  if (!layout.ok()) return layout.status();
  Result<HostModel> model = HostModel::Load(*layout);
  if (!model.ok()) return model.status();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "netloader-server: loaded %zu tensors (%s) from %s in %.2f s\n",
               model->view().tensors.size(), cli::HumanBytes(model->view().total_bytes()).c_str(),
               path.c_str(), seconds);
  return model;
}

// A stopped server's counters: one line, or one JSON object with `json`.
void PrintServed(Server& server, bool json) {
  if (json) {
    std::cout << cli::ServerSummary(server).dump() << std::endl;
    return;
  }
  const ServerStats s = server.stats();
  std::printf(
      "served %llu clients (%llu failed, %llu refused, %llu redirected, %llu failed "
      "authentication), %s sent\n",
      static_cast<unsigned long long>(s.clients_served),
      static_cast<unsigned long long>(s.clients_failed), static_cast<unsigned long long>(s.refused),
      static_cast<unsigned long long>(s.redirected),
      static_cast<unsigned long long>(s.unauthenticated), cli::HumanBytes(s.bytes_sent).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "netloader-server: serve a model held in memory to netloader clients.\n"
      "Loads --model (a .safetensors file, a model.safetensors.index.json, or a directory of\n"
      "either) into memory, then answers ZeroMQ registrations on --listen and streams the\n"
      "tensors over MPI to every client whose fingerprint matches, several at once. Runs until\n"
      "SIGINT/SIGTERM, then stops gracefully."};
  app.footer(cli::kExitCodeHelp);
  std::string model_path;
  std::string endpoint_file;
  ServerOptions options;
  cli::CommonFlags common;
  uint64_t chunk_mib = options.chunk_bytes >> 20;
  app.add_option("--model", model_path, "Checkpoint to load and serve")->required();
  app.add_option("--listen", options.listen,
                 "ZeroMQ endpoint to bind; port 0 picks a free one (see --endpoint-file)")
      ->capture_default_str();
  app.add_option("--endpoint-file", endpoint_file,
                 "Write the bound endpoint to this file once serving (for scripts)");
  app.add_option("--max-clients", options.max_concurrent_transfers,
                 "Clients streamed at once; more are told Busy and retry")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--chunk-mib", chunk_mib, "MPI message size in MiB")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cli::AddFanoutFlag(app, options.fanout);
  cli::AddAdvertiseFlag(app, options.advertise);
  cli::AddRegistryTtlFlag(app, options.registry_ttl);
  common.Add(app);
  CLI11_PARSE(app, argc, argv);
  common.ApplyLogLevel();

  Status applied = common.ApplyTo(options);
  if (applied.ok()) applied = common.StartMetrics("netloader-server");
  if (!applied.ok()) {
    std::fprintf(stderr, "netloader-server: %s\n", applied.ToString().c_str());
    return cli::kExitUsage;
  }
  options.chunk_bytes = chunk_mib << 20;

  // Before any thread starts, so they all inherit the mask and the main thread alone takes them.
  const sigset_t stop_signals = cli::BlockStopSignals();

  Result<HostModel> model = LoadModel(model_path);
  if (!model.ok()) {
    std::fprintf(stderr, "netloader-server: %s\n", model.status().ToString().c_str());
    return cli::kExitBadModel;
  }

  Result<std::unique_ptr<Server>> server = Server::Start(options, model->view());
  if (!server.ok()) {
    std::fprintf(stderr, "netloader-server: %s\n", server.status().ToString().c_str());
    return cli::ExitCodeFor(server.status().code()) == cli::kExitBadModel ? cli::kExitUsage
                                                                          : cli::kExitUnavailable;
  }
  std::fprintf(stderr, "netloader-server: serving at %s (rendezvous %s, %s); Ctrl-C to stop\n",
               (*server)->endpoint().c_str(), (*server)->rendezvous_uri().c_str(),
               common.no_auth ? "NO authentication: --no-auth"
                              : ("clients need the secret in " + common.secret_file).c_str());
  cli::WriteEndpointFile(endpoint_file, (*server)->endpoint());
  const std::string stopped_by = cli::ServeUntilStopped(**server, stop_signals);
  std::fprintf(stderr, "netloader-server: %s received, stopped\n", stopped_by.c_str());
  PrintServed(**server, common.json);
  return cli::kExitOk;
}
