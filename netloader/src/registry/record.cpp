#include "netloader/src/registry/record.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>

#include "netloader/src/base/xxh3.h"

namespace netloader::registry {
namespace {

using Json = nlohmann::json;

bool Serves(const std::string& state) { return state == "ready" || state == "loading"; }

// Weighted rendezvous hashing: the holder with the largest score wins. With the hash mapped to
// u in (0, 1), -weight / ln(u) gives each holder a share proportional to its weight, and a
// holder that leaves moves only the clients it had.
double Score(const std::string& identity, const Record& record) {
  const std::string key = identity + '\n' + record.endpoint;
  const uint64_t h = XXH3_64bits(key.data(), key.size());
  const double u = (static_cast<double>(h >> 11) + 0.5) / 9007199254740992.0;  // (0, 1)
  return -static_cast<double>(std::max(record.free_slots, 1)) / std::log(u);
}

}  // namespace

std::string ToJson(const Record& r) {
  return Json{{"version", kRecordVersion},
              {"endpoint", r.endpoint},
              {"generation", r.generation},
              {"model_id", r.model_id},
              {"tp_size", r.partition.tp_size},
              {"tp_rank", r.partition.tp_rank},
              {"pp_size", r.partition.pp_size},
              {"pp_rank", r.partition.pp_rank},
              {"layout_key", r.partition.layout_key},
              {"table_digest", r.table_digest},
              {"state", r.state},
              {"bytes_held", r.bytes_held},
              {"bytes_total", r.bytes_total},
              {"free_slots", r.free_slots},
              {"topology", r.topology}}
      .dump(-1, ' ', false, Json::error_handler_t::replace);  // never throws on bad UTF-8
}

Result<Record> FromJson(const std::string& text) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [](const std::string& why) { return Status(StatusCode::kInvalidArgument, why); };
  if (!j.is_object()) return bad("not a JSON object");
  if (!j.contains("version") || !j["version"].is_number_integer()) return bad("no version");
  if (j["version"].get<int>() != kRecordVersion) {
    return bad("record version " + j["version"].dump() + ", this build reads " +
               std::to_string(kRecordVersion));
  }
  Record r;
  try {
    r.endpoint = j.at("endpoint").get<std::string>();
    r.generation = j.at("generation").get<uint64_t>();
    r.model_id = j.at("model_id").get<std::string>();
    r.partition.tp_size = j.at("tp_size").get<int>();
    r.partition.tp_rank = j.at("tp_rank").get<int>();
    r.partition.pp_size = j.at("pp_size").get<int>();
    r.partition.pp_rank = j.at("pp_rank").get<int>();
    r.partition.layout_key = j.at("layout_key").get<std::string>();
    r.table_digest = j.at("table_digest").get<std::string>();
    r.state = j.at("state").get<std::string>();
    r.bytes_held = j.at("bytes_held").get<uint64_t>();
    r.bytes_total = j.at("bytes_total").get<uint64_t>();
    r.free_slots = j.at("free_slots").get<int>();
    r.topology = j.at("topology").get<std::string>();
  } catch (const Json::exception& e) {
    return bad(std::string("a field is missing or of the wrong type (") + e.what() + ")");
  }
  if (r.endpoint.rfind("tcp://", 0) != 0) return bad("endpoint '" + r.endpoint + "' is not tcp://");
  return r;
}

std::string RecordKey(const std::string& prefix, const Record& record) {
  char generation[17];
  std::snprintf(generation, sizeof(generation), "%016llx",
                static_cast<unsigned long long>(record.generation));
  return prefix + "holders/" + record.endpoint + "/" + generation;
}

std::string ReaderClaimName(const Wanted& w) {
  const Partition& p = w.partition;
  const std::string who = w.model_id + '\n' + std::to_string(p.tp_size) + '\n' +
                          std::to_string(p.tp_rank) + '\n' + std::to_string(p.pp_size) + '\n' +
                          std::to_string(p.pp_rank) + '\n' + p.layout_key;
  char hash[17];
  std::snprintf(hash, sizeof(hash), "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(who.data(), who.size())));
  return "readers/" + w.table_digest + "/" + hash;
}

std::vector<std::string> Choose(const std::vector<Record>& records, const Wanted& wanted) {
  // One record per endpoint, its latest process's: an earlier one's is stale whatever it says.
  std::map<std::string, const Record*> newest;
  for (const Record& r : records) {
    auto [it, inserted] = newest.emplace(r.endpoint, &r);
    if (!inserted && r.generation > it->second->generation) it->second = &r;
  }
  for (auto it = newest.begin(); it != newest.end();) {
    const Record& r = *it->second;
    const Partition& p = r.partition;
    const Partition& w = wanted.partition;
    const bool usable =
        Serves(r.state) && r.endpoint != wanted.self &&
        !(r.state == "loading" && r.bytes_held == 0) &&
        (wanted.model_id.empty() || r.model_id == wanted.model_id) && p.tp_size == w.tp_size &&
        p.tp_rank == w.tp_rank && p.layout_key == w.layout_key &&
        (!wanted.whole_model || (p.pp_size == w.pp_size && p.pp_rank == w.pp_rank)) &&
        (!wanted.whole_model || wanted.table_digest.empty() || r.table_digest.empty() ||
         r.table_digest == wanted.table_digest);
    it = usable ? std::next(it) : newest.erase(it);
  }
  // Ordered by (not ready, no free slot, other topology, -score): smallest first.
  std::vector<std::tuple<bool, bool, bool, double, std::string>> ranked;
  for (const auto& [endpoint, r] : newest) {
    const bool other_topology = !wanted.topology.empty() && r->topology != wanted.topology;
    ranked.emplace_back(r->state != "ready", r->free_slots <= 0, other_topology,
                        -Score(wanted.identity, *r), endpoint);
  }
  std::sort(ranked.begin(), ranked.end());
  std::vector<std::string> out;
  for (const auto& entry : ranked) out.push_back(std::get<4>(entry));
  return out;
}

}  // namespace netloader::registry
