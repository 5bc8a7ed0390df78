// A minimal engine embedding netloader through its public API only:
//   1. allocate buffers for the model the engine runs (layout from the checkpoint's headers);
//   2. fill them from the first source that holds the same model, or from disk if none can;
//   3. serve those same buffers to the next instance, while the engine keeps running.
// Usage: netloader-embed-example --model PATH [--source tcp://HOST:PORT ...] --endpoint-file F
//        [--secret-file PATH | --no-auth]
// Prints one JSON line on SIGTERM: {"loaded_from": ..., "bytes": N, "served": K}.

#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "netloader/client.h"
#include "netloader/safetensors.h"
#include "netloader/secret.h"
#include "netloader/server.h"

int main(int argc, char** argv) {
  CLI::App app{"netloader-embed-example: load a model from peers (or disk), then serve it."};
  std::string model_path, endpoint_file;
  std::vector<std::string> sources;
  app.add_option("--model", model_path,
                 "Checkpoint: its headers give the layout; the disk "
                 "fallback reads its data")
      ->required();
  app.add_option("--source", sources, "Peers to load from, in order");
  app.add_option("--endpoint-file", endpoint_file, "Where to write this instance's endpoint")
      ->required();
  std::string secret_file = netloader::DefaultSecretPath();
  bool no_auth = false;
  auto* secret_option =
      app.add_option("--secret-file", secret_file, "Shared secret (created if missing)")
          ->capture_default_str();
  app.add_flag("--no-auth", no_auth, "No shared secret (local tests only)")
      ->excludes(secret_option);
  CLI11_PARSE(app, argc, argv);

  // 0. The shared secret: peers without it learn nothing from this instance, and vice versa.
  std::string secret;
  if (!no_auth) {
    netloader::Result<std::string> read = netloader::LoadOrCreateSecret(secret_file);
    if (!read.ok()) {
      std::fprintf(stderr, "%s\n", read.status().ToString().c_str());
      return 2;
    }
    secret = *read;
  }

  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  // 1. The engine's own buffers.
  netloader::Result<netloader::CheckpointLayout> layout =
      netloader::ReadCheckpointLayout(model_path);
  if (!layout.ok()) {
    std::fprintf(stderr, "%s\n", layout.status().ToString().c_str());
    return 3;
  }
  netloader::Result<netloader::HostModel> weights = netloader::HostModel::Allocate(*layout);
  if (!weights.ok()) return 1;

  // 2. From peers; anything short of a verified load falls back to disk.
  std::string loaded_from = "disk";
  if (!sources.empty()) {
    netloader::ClientOptions options;
    options.sources = sources;
    options.register_timeout = std::chrono::seconds(5);
    options.secret = secret;
    netloader::Result<netloader::LoadStats> stats = netloader::Load(options, weights->view());
    if (stats.ok()) {
      loaded_from = stats->source;
    } else {
      std::fprintf(stderr, "netloader failed (%s); loading from disk\n",
                   stats.status().ToString().c_str());
    }
  }
  if (loaded_from == "disk") {
    netloader::Result<netloader::HostModel> disk = netloader::HostModel::Load(*layout);
    if (!disk.ok()) {
      std::fprintf(stderr, "%s\n", disk.status().ToString().c_str());
      return 3;
    }
    const auto& from = disk->view().tensors;
    const auto& to = weights->view().tensors;
    for (size_t i = 0; i < to.size(); ++i) std::memcpy(to[i].data, from[i].data, to[i].size_bytes);
  }

  // 3. Every loaded instance is a source for the next one.
  netloader::ServerOptions server_options;
  server_options.secret = secret;
  netloader::Result<std::unique_ptr<netloader::Server>> server =
      netloader::Server::Start(server_options, weights->view());
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 5;
  }
  std::ofstream(endpoint_file + ".tmp") << (*server)->endpoint() << "\n";
  std::rename((endpoint_file + ".tmp").c_str(), endpoint_file.c_str());

  int signal_number = 0;
  sigwait(&stop, &signal_number);  // an engine would run its forward passes here
  (*server)->Stop();
  std::printf("{\"loaded_from\":\"%s\",\"bytes\":%llu,\"served\":%llu}\n", loaded_from.c_str(),
              static_cast<unsigned long long>(weights->view().total_bytes()),
              static_cast<unsigned long long>((*server)->stats().clients_served));
  return 0;
}
