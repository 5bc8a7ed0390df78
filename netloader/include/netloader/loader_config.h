#pragma once

// An engine's --model-loader-extra-config for --load-format=netloader: the keys users of
// vLLM-Ascend's Netloader know, plus netloader's own. Strict: an unknown key, a wrong type or a
// value out of range is an error naming the key; nothing is silently replaced by a default.
// One parser for every engine: netloader-llama uses it, and so does the Python package
// (netloader.parse_loader_config), so both accept exactly the same.

#include <map>
#include <string>
#include <vector>

#include "netloader/export.h"
#include "netloader/status.h"

namespace netloader {

struct LoaderConfig {
  // SOURCE: rank -> ZeroMQ endpoints ("tcp://host:port") of the same rank of running instances,
  // tried in order.
  std::map<int, std::vector<std::string>> sources;
  int listen_port = 0;  // LISTEN_PORT: rank r serves on LISTEN_PORT + r; 0 picks a free port
  std::string listen_host = "127.0.0.1";  // LISTEN_HOST
  bool serve = true;                      // SERVE
  std::string model_id;                   // MODEL
  std::string output_prefix;              // OUTPUT_PREFIX: writes <prefix><rank>.txt
  double register_timeout_s = 10;         // REGISTER_TIMEOUT
  double connect_timeout_s = 30;          // CONNECT_TIMEOUT
  double stall_timeout_s = 30;            // STALL_TIMEOUT
  double heartbeat_timeout_s = 10;        // HEARTBEAT_TIMEOUT
  bool auth = true;                       // AUTH
  std::string secret_file;                // SECRET_FILE; empty: DefaultSecretPath()
  int max_clients = 4;                    // MAX_CLIENTS
  int fanout = 1;                         // FANOUT (ServerOptions::fanout)
  int chunk_mib = 1;                      // CHUNK_MIB
  int window = 4;                         // WINDOW
  int stripe = 1;                         // STRIPE
  std::string delta_from;                 // DELTA_FROM
  std::vector<std::string> tensors;       // TENSORS: name patterns; empty: every tensor
  std::string rendezvous;                 // RENDEZVOUS
  std::string interface = "lo";           // INTERFACE
};

// Parses the JSON object given to --model-loader-extra-config for an instance of `world_size`
// ranks. CONFIG_FILE names a JSON file holding the same keys; a key given inline wins over the
// file's. Errors are InvalidArgument naming the key (and the file), NotFound for a missing file.
NETLOADER_EXPORT Result<LoaderConfig> ParseLoaderConfig(const std::string& json_text,
                                                        int world_size);

// The keys, one line each, for --help.
NETLOADER_EXPORT std::string LoaderConfigHelp();

}  // namespace netloader
