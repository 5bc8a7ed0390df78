#include "netloader/loader_config.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "netloader/limits.h"
#include "netloader/tensor.h"

namespace netloader {

using Json = nlohmann::json;

namespace {

struct Key {
  const char* name;
  std::string help;
  // Checks the value and stores it; returns "" or what is wrong with it.
  std::function<std::string(const Json&, LoaderConfig&, int world)> apply;
};

std::string Integer(const Json& v, int low, int high, int* out) {
  if (!v.is_number_integer() || v.get<int64_t>() < low || v.get<int64_t>() > high) {
    return "must be an integer in [" + std::to_string(low) + ", " + std::to_string(high) + "]";
  }
  *out = v.get<int>();
  return "";
}

// A number of seconds in (0, 86400], or [0, 86400] when `zero` means something.
std::string Seconds(const Json& v, std::chrono::milliseconds* out, bool zero = false) {
  if (!v.is_number() || !(zero ? v.get<double>() >= 0 : v.get<double>() > 0) ||
      v.get<double>() > 86400) {
    return zero ? "must be a number of seconds in [0, 86400]"
                : "must be a number of seconds in (0, 86400]";
  }
  *out = FromSeconds(v.get<double>());
  return "";
}

// Keys that set a field both the server and the load have.
template <typename T, typename Parse>
std::string Both(LoaderConfig& c, T PeerOptions::*field, Parse parse) {
  T value{};
  std::string error = parse(&value);
  if (error.empty()) c.server.*field = c.client.*field = value;
  return error;
}

// "(default N)" for a help line, N in seconds.
std::string DefaultSeconds(std::chrono::milliseconds ms) {
  std::ostringstream out;
  out << "(default " << ToSeconds(ms) << ")";
  return out.str();
}
std::string Default(int64_t value) { return "(default " + std::to_string(value) + ")"; }

std::string Bool(const Json& v, bool* out) {
  if (!v.is_boolean()) return "must be true or false";
  *out = v.get<bool>();
  return "";
}

std::string Text(const Json& v, bool may_be_empty, std::string* out) {
  if (!v.is_string() || (!may_be_empty && v.get<std::string>().empty())) {
    return may_be_empty ? "must be a string" : "must be a non-empty string";
  }
  *out = v.get<std::string>();
  return "";
}

// "host:port" (Netloader's form) or "tcp://host:port".
std::string Endpoint(const Json& v, std::string* out) {
  if (!v.is_string()) return "must list strings \"host:port\"";
  std::string s = v.get<std::string>();
  if (s.rfind("tcp://", 0) == 0) s = s.substr(6);
  const size_t colon = s.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !(std::istringstream(s.substr(colon + 1)) >> port) ||
      std::to_string(port) != s.substr(colon + 1) || port < 1 || port > 65535) {
    return "has '" + v.get<std::string>() + "', which is not host:port";
  }
  *out = "tcp://" + s;
  return "";
}

std::string Sources(const Json& v, LoaderConfig& c, int world) {
  const char* form = "must be a list of {\"device_id\": rank, \"sources\": [\"host:port\", ...]}";
  if (!v.is_array()) return form;
  c.sources.clear();
  for (const Json& entry : v) {
    if (!entry.is_object() || entry.size() != 2 || !entry.contains("device_id") ||
        !entry.contains("sources") || !entry["sources"].is_array()) {
      return form;
    }
    int rank = 0;
    if (std::string e = Integer(entry["device_id"], 0, world - 1, &rank); !e.empty()) {
      return "device_id " + e + " (this instance has " + std::to_string(world) + " ranks)";
    }
    if (c.sources.count(rank)) return "lists device_id " + std::to_string(rank) + " twice";
    std::vector<std::string>& list = c.sources[rank];
    for (const Json& source : entry["sources"]) {
      std::string endpoint;
      if (std::string e = Endpoint(source, &endpoint); !e.empty()) {
        return "device_id " + std::to_string(rank) + " " + e;
      }
      list.push_back(endpoint);
    }
  }
  return "";
}

const std::vector<Key>& Keys() {
  static const std::vector<Key> keys = {
      {"SOURCE",
       "list of {\"device_id\": RANK, \"sources\": [\"host:port\", ...]}: where rank RANK loads "
       "from, tried in order; a rank with no entry loads from disk",
       Sources},
      {"LISTEN_PORT", "rank r serves its weights on LISTEN_PORT + r (default: a free port, logged)",
       [](const Json& v, LoaderConfig& c, int world) {
         return Integer(v, 1, 65536 - world, &c.listen_port);
       }},
      {"METRICS_PORT",
       "rank r serves Prometheus metrics at http://LISTEN_HOST:(METRICS_PORT + r)/metrics (0: a "
       "free port, logged; default: none)",
       [](const Json& v, LoaderConfig& c, int world) {
         return Integer(v, 0, 65536 - world, &c.metrics_port);
       }},
      {"LISTEN_HOST", "address to serve on (default " + LoaderConfig().listen_host + ")",
       [](const Json& v, LoaderConfig& c, int) { return Text(v, false, &c.listen_host); }},
      {"ADVERTISE_HOST",
       "the host name or address other instances reach the ranks at, when LISTEN_HOST is "
       "0.0.0.0 (as in a container) or behind NAT: what the registry lists and relays announce",
       [](const Json& v, LoaderConfig& c, int) { return Text(v, false, &c.server.advertise); }},
      {"SERVE", "serve the loaded weights to later instances (default true)",
       [](const Json& v, LoaderConfig& c, int) { return Bool(v, &c.serve); }},
      {"MODEL", "model id/revision in the fingerprint; sources must declare the same",
       [](const Json& v, LoaderConfig& c, int) {
         return Both(c, &PeerOptions::model_id,
                     [&](std::string* out) { return Text(v, true, out); });
       }},
      {"OUTPUT_PREFIX", "rank r writes its serving endpoint to <OUTPUT_PREFIX>r.txt",
       [](const Json& v, LoaderConfig& c, int) { return Text(v, false, &c.output_prefix); }},
      {"CONFIG_FILE", "JSON file with these keys; keys given inline win over the file's",
       [](const Json&, LoaderConfig&, int) { return std::string(); }},
      {"REGISTER_TIMEOUT",
       "seconds a source has to answer " + DefaultSeconds(ClientOptions().register_timeout),
       [](const Json& v, LoaderConfig& c, int) { return Seconds(v, &c.client.register_timeout); }},
      {"COLD_START_WAIT",
       "with REGISTRY, when no instance holds the model: seconds a rank waits for the instance "
       "that reads it from storage (the first rank whose load serves to claim that in the "
       "registry) to serve it, rather than reading it too; 0 reads at once " +
           DefaultSeconds(ClientOptions().cold_start_wait),
       [](const Json& v, LoaderConfig& c, int) {
         return Seconds(v, &c.client.cold_start_wait, /*zero=*/true);
       }},
      {"CONNECT_TIMEOUT",
       "seconds for the MPI connection to a source " +
           DefaultSeconds(PeerOptions().connect_timeout),
       [](const Json& v, LoaderConfig& c, int) {
         return Both(c, &PeerOptions::connect_timeout,
                     [&](std::chrono::milliseconds* out) { return Seconds(v, out); });
       }},
      {"STALL_TIMEOUT",
       "seconds without data before a transfer is abandoned " +
           DefaultSeconds(PeerOptions().stall_timeout),
       [](const Json& v, LoaderConfig& c, int) {
         return Both(c, &PeerOptions::stall_timeout,
                     [&](std::chrono::milliseconds* out) { return Seconds(v, out); });
       }},
      {"HEARTBEAT_TIMEOUT",
       "seconds without a heartbeat after which a source or client is presumed dead " +
           DefaultSeconds(PeerOptions().heartbeat_timeout),
       [](const Json& v, LoaderConfig& c, int) {
         return Both(c, &PeerOptions::heartbeat_timeout, [&](std::chrono::milliseconds* out) {
           std::string e = Seconds(v, out);
           return e.empty() && *out < kMinHeartbeatTimeout
                      ? "must be at least " + std::to_string(kMinHeartbeatTimeout.count() / 1000) +
                            " seconds"
                      : e;
         });
       }},
      {"AUTH",
       "require and present the shared secret (default true); false only for local tests: anyone "
       "who reaches the port can then pull the weights",
       [](const Json& v, LoaderConfig& c, int) { return Bool(v, &c.auth); }},
      {"SECRET_FILE",
       "the shared secret, created if missing (default $NETLOADER_SECRET_FILE, else "
       "~/.config/netloader/secret)",
       [](const Json& v, LoaderConfig& c, int) { return Text(v, false, &c.secret_file); }},
      {"MAX_CLIENTS",
       "instances served at once when serving " + Default(ServerOptions().max_concurrent_transfers),
       [](const Json& v, LoaderConfig& c, int) {
         return Integer(v, 1, 1024, &c.server.max_concurrent_transfers);
       }},
      {"FANOUT",
       "instances streamed at once before newcomers are redirected to the instances loading from "
       "this one (relay fan-out; 1: a chain; 0: never redirect) " +
           Default(ServerOptions().fanout),
       [](const Json& v, LoaderConfig& c, int) { return Integer(v, 0, 1024, &c.server.fanout); }},
      {"CHUNK_MIB",
       "MPI message size when serving, MiB " + Default(ServerOptions().chunk_bytes >> 20),
       [](const Json& v, LoaderConfig& c, int) {
         int mib = 0;
         std::string e = Integer(v, 1, 1024, &mib);
         if (e.empty()) c.server.chunk_bytes = static_cast<uint64_t>(mib) << 20;
         return e;
       }},
      {"WINDOW", "MPI messages in flight per transfer " + Default(PeerOptions().window),
       [](const Json& v, LoaderConfig& c, int) {
         return Both(c, &PeerOptions::window, [&](int* out) { return Integer(v, 1, 64, out); });
       }},
      {"STRIPE",
       "load from up to this many of a rank's sources at once, disjoint chunks from each; needs "
       "RENDEZVOUS or MPI_HELPERS " +
           Default(ClientOptions().stripe),
       [](const Json& v, LoaderConfig& c, int) { return Integer(v, 1, 64, &c.client.stripe); }},
      {"DELTA_FROM",
       "a directory holding an older copy of the checkpoint (same layout): each rank starts from "
       "its weights there and pulls from its sources only the chunks that differ",
       [](const Json& v, LoaderConfig& c, int) { return Text(v, false, &c.delta_from); }},
      {"TENSORS",
       "list of tensor name patterns ('*', '?'): each rank loads only its tensors that match "
       "through netloader, from a source of any pipeline split that holds them (a partial load), "
       "and the rest of its tensors from disk; [\"*\"] loads all of them that way",
       [](const Json& v, LoaderConfig& c, int) -> std::string {
         const char* form = "must be a non-empty list of tensor name patterns";
         if (!v.is_array() || v.empty()) return form;
         c.tensors.clear();
         for (const Json& pattern : v) {
           if (!pattern.is_string()) return form;
           Status valid = ValidateTensorPattern(pattern.get<std::string>());
           if (!valid.ok()) return "has " + valid.message();
           c.tensors.push_back(pattern.get<std::string>());
         }
         return "";
       }},
      {"RENDEZVOUS",
       "MPI rendezvous shared by all instances (ompi-server URI or file:PATH); required under "
       "mpirun, which must be given the same with --ompi-server",
       [](const Json& v, LoaderConfig& c, int) {
         std::string e = Text(v, false, &c.server.transport.rendezvous_uri);
         c.client.transport.rendezvous_uri = c.server.transport.rendezvous_uri;
         return e;
       }},
      {"MPI_HELPERS",
       "run MPI in helper processes, never in the engine (default false); then no RENDEZVOUS is "
       "needed to relay or stripe; under mpirun MPI stays in the engine",
       [](const Json& v, LoaderConfig& c, int) {
         std::string e = Bool(v, &c.server.transport.mpi_helpers);
         c.client.transport.mpi_helpers = c.server.transport.mpi_helpers;
         return e;
       }},
      {"REGISTRY",
       "etcd client URL (http://HOST:PORT[/PREFIX]) of the fleet's registry: each rank's server "
       "publishes itself there, each rank's load finds its sources there before its SOURCE",
       [](const Json& v, LoaderConfig& c, int) {
         return Both(c, &PeerOptions::registry,
                     [&](std::string* out) { return Text(v, false, out); });
       }},
      {"TOPOLOGY", "a label (rack, zone) the servers publish and the loads prefer among holders",
       [](const Json& v, LoaderConfig& c, int) {
         return Both(c, &PeerOptions::topology,
                     [&](std::string* out) { return Text(v, false, out); });
       }},
      {"INTERFACE", "network interface for MPI (default " + TransportOptions().interface + ")",
       [](const Json& v, LoaderConfig& c, int) {
         std::string e = Text(v, false, &c.server.transport.interface);
         c.client.transport.interface = c.server.transport.interface;
         return e;
       }},
  };
  return keys;
}

Result<Json> ParseObject(const std::string& text, const std::string& where) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status(StatusCode::kInvalidArgument, where + " is not valid JSON");
  if (!j.is_object()) return Status(StatusCode::kInvalidArgument, where + " must be a JSON object");
  return j;
}

}  // namespace

Result<LoaderConfig> ParseLoaderConfig(const std::string& json_text, int world_size) {
  const std::string inline_where = "--model-loader-extra-config";
  Result<Json> inline_keys = ParseObject(json_text, inline_where);
  if (!inline_keys.ok()) return inline_keys.status();
  Json merged = Json::object();
  std::map<std::string, std::string> origin;
  if (auto file = inline_keys->find("CONFIG_FILE"); file != inline_keys->end()) {
    if (!file->is_string() || file->get<std::string>().empty()) {
      return Status(StatusCode::kInvalidArgument,
                    inline_where + ": CONFIG_FILE must be a non-empty string");
    }
    const std::string path = file->get<std::string>();
    struct stat info {};
    if (stat(path.c_str(), &info) != 0) {
      return Status(StatusCode::kNotFound, "CONFIG_FILE " + path + " cannot be read");
    }
    if (!S_ISREG(info.st_mode) || info.st_size > (1 << 20)) {
      return Status(StatusCode::kInvalidArgument,
                    "CONFIG_FILE " + path + " must be a regular file of at most 1 MiB");
    }
    std::ifstream in(path);
    if (!in) return Status(StatusCode::kNotFound, "CONFIG_FILE " + path + " cannot be read");
    std::stringstream text;
    text << in.rdbuf();
    Result<Json> from_file = ParseObject(text.str(), "CONFIG_FILE " + path);
    if (!from_file.ok()) return from_file.status();
    if (from_file->contains("CONFIG_FILE")) {
      return Status(StatusCode::kInvalidArgument,
                    "CONFIG_FILE " + path + ": CONFIG_FILE cannot be nested");
    }
    for (auto& [key, value] : from_file->items()) {
      merged[key] = value;
      origin[key] = "CONFIG_FILE " + path;
    }
  }
  for (auto& [key, value] : inline_keys->items()) {
    merged[key] = value;
    origin[key] = inline_where;
  }
  LoaderConfig config;
  for (auto& [key, value] : merged.items()) {
    const Key* known = nullptr;
    for (const Key& k : Keys()) {
      if (key == k.name) known = &k;
    }
    if (known == nullptr) {
      std::string names;
      for (const Key& k : Keys()) names += std::string(names.empty() ? "" : ", ") + k.name;
      return Status(StatusCode::kInvalidArgument,
                    origin[key] + ": unknown key '" + key + "' (known: " + names + ")");
    }
    if (std::string error = known->apply(value, config, world_size); !error.empty()) {
      return Status(StatusCode::kInvalidArgument, origin[key] + ": " + key + " " + error);
    }
  }
  return config;
}

std::string LoaderConfigHelp() {
  std::string out;
  for (const Key& k : Keys()) out += std::string("  ") + k.name + ": " + k.help + "\n";
  return out;
}

RankOptions OptionsForRank(const LoaderConfig& config, int rank, const Partition& partition,
                           const std::string& secret) {
  RankOptions out{config.server, config.client, false, ""};
  const int port = config.listen_port == 0 ? 0 : config.listen_port + rank;
  out.server.listen = "tcp://" + config.listen_host + ":" + std::to_string(port);
  if (auto it = config.sources.find(rank); it != config.sources.end()) {
    out.client.sources = it->second;
  }
  out.client.busy_timeout = std::max(out.client.busy_timeout, out.client.register_timeout);
  for (PeerOptions* peer :
       {static_cast<PeerOptions*>(&out.server), static_cast<PeerOptions*>(&out.client)}) {
    peer->partition = partition;
    peer->secret = secret;
  }
  if (config.metrics_port >= 0) {
    out.metrics_listen = config.listen_host + ":" +
                         std::to_string(config.metrics_port == 0 ? 0 : config.metrics_port + rank);
  }
  out.relay =
      config.serve && config.tensors.empty() &&
      (!config.server.transport.rendezvous_uri.empty() || config.server.transport.mpi_helpers);
  return out;
}

}  // namespace netloader
