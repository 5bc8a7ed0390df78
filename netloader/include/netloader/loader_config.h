#pragma once

// An engine's --model-loader-extra-config for --load-format=netloader: the keys users of
// vLLM-Ascend's Netloader know, plus netloader's own. Strict: an unknown key, a wrong type or a
// value out of range is an error naming the key; nothing is silently replaced by a default.
// One parser for every engine: netloader-llama uses it, and so does the Python package
// (netloader.parse_loader_config), so both accept exactly the same.

#include <map>
#include <string>
#include <vector>

#include "netloader/client.h"
#include "netloader/export.h"
#include "netloader/server.h"
#include "netloader/status.h"

namespace netloader {

struct LoaderConfig {
  // SOURCE: rank -> ZeroMQ endpoints ("tcp://host:port") of the same rank of running instances,
  // tried in order.
  std::map<int, std::vector<std::string>> sources;
  int listen_port = 0;  // LISTEN_PORT: rank r serves on LISTEN_PORT + r; 0 picks a free port
  std::string listen_host = "127.0.0.1";  // LISTEN_HOST
  int metrics_port = -1;  // METRICS_PORT: rank r's metrics on METRICS_PORT + r; 0: free; -1: none
  bool serve = true;      // SERVE
  std::string output_prefix;         // OUTPUT_PREFIX: writes <prefix><rank>.txt
  bool auth = true;                  // AUTH
  std::string secret_file;           // SECRET_FILE; empty: DefaultSecretPath()
  std::string delta_from;            // DELTA_FROM
  std::vector<std::string> tensors;  // TENSORS: name patterns; empty: every tensor
  // What every rank's server and load start from, with the options structs' own defaults. The
  // keys set: both, MODEL (model_id), WINDOW, CONNECT_TIMEOUT, STALL_TIMEOUT, HEARTBEAT_TIMEOUT,
  // RENDEZVOUS, MPI_HELPERS and INTERFACE (transport), REGISTRY and TOPOLOGY; the server,
  // MAX_CLIENTS (max_concurrent_transfers), FANOUT and CHUNK_MIB (chunk_bytes); the load,
  // REGISTER_TIMEOUT and STRIPE.
  ServerOptions server;
  ClientOptions client;
};

// Parses the JSON object given to --model-loader-extra-config for an instance of `world_size`
// ranks. CONFIG_FILE names a JSON file holding the same keys; a key given inline wins over the
// file's. Errors are InvalidArgument naming the key (and the file), NotFound for a missing file.
NETLOADER_EXPORT Result<LoaderConfig> ParseLoaderConfig(const std::string& json_text,
                                                        int world_size);

// The keys, one line each, for --help.
NETLOADER_EXPORT std::string LoaderConfigHelp();

// One rank's options, as every engine derives them from its config (C++: netloader-llama;
// Python: netloader.options_for_rank, which the PyTorch engine uses).
struct RankOptions {
  // Listens on LISTEN_HOST at LISTEN_PORT + rank (a free port when LISTEN_PORT is 0).
  ServerOptions server;
  // The rank's SOURCE entry (none: the rank loads from disk). A busy source is retried for at
  // least the register deadline.
  ClientOptions client;
  // Serve while loading (Server::StartRelay, ClientOptions::relay): SERVE with a shared
  // RENDEZVOUS (a relay starts MPI before it hears from its source) or MPI_HELPERS (its server
  // and its load each run MPI in a helper of their own), and no TENSORS (a relay serves the
  // whole rank).
  bool relay = false;
  // Where the rank serves its Prometheus metrics (ServeMetrics), "HOST:PORT"; empty: nowhere.
  std::string metrics_listen;
};
NETLOADER_EXPORT RankOptions OptionsForRank(const LoaderConfig& config, int rank,
                                            const Partition& partition, const std::string& secret);

}  // namespace netloader
