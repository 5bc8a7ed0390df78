#include "netloader/src/registry/discovery.h"

#include <map>
#include <mutex>

#include "netloader/src/base/log.h"

namespace netloader::registry {
namespace {

// The records last read from each registry URL, for when etcd is away.
struct LastKnown {
  std::mutex mu;
  std::map<std::string, std::vector<Record>> records;  // guarded by mu
};

LastKnown& Cache() {
  static LastKnown* cache = new LastKnown;  // never destroyed: loads may run at exit
  return *cache;
}

}  // namespace

Result<std::vector<std::string>> Discover(const std::string& url, const Wanted& wanted,
                                          Clock::time_point deadline) {
  Result<Etcd> etcd = Etcd::Parse(url);
  if (!etcd.ok()) return etcd.status();
  Result<std::vector<KeyValue>> listed = etcd->Range(etcd->prefix() + "holders/", deadline);
  std::vector<Record> records;
  LastKnown& cache = Cache();
  if (!listed.ok()) {
    std::lock_guard<std::mutex> lock(cache.mu);
    auto it = cache.records.find(url);
    if (it == cache.records.end()) return listed.status();
    Log().warn("registry: {}; using the {} holders it listed last", listed.status().message(),
               it->second.size());
    records = it->second;
  } else {
    for (const KeyValue& kv : *listed) {
      Result<Record> record = FromJson(kv.value);
      if (!record.ok()) {
        Log().warn("registry: ignored the record at {}: {}", kv.key, record.status().message());
        continue;
      }
      records.push_back(std::move(*record));
    }
    std::lock_guard<std::mutex> lock(cache.mu);
    cache.records[url] = records;
  }
  return Choose(records, wanted);
}

Result<std::string> ClaimHolder(const std::string& url, const std::string& name,
                                Clock::time_point deadline) {
  Result<Etcd> etcd = Etcd::Parse(url);
  if (!etcd.ok()) return etcd.status();
  const std::string key = etcd->prefix() + name;
  Result<std::vector<KeyValue>> listed = etcd->Range(key, deadline);
  if (!listed.ok()) return listed.status();
  for (const KeyValue& kv : *listed) {
    if (kv.key == key) return kv.value.empty() ? std::string("an unnamed instance") : kv.value;
  }
  return std::string();
}

}  // namespace netloader::registry
