#pragma once

// The few etcd v3 calls the registry makes, over etcd's JSON gateway (HTTP/1.1 POST of JSON to
// /v3/..., keys and values base64): no gRPC stack for five calls a second at most (DESIGN.md,
// "The registry"). One connection per call, closed after it, so that a restarted etcd or a
// half-dead connection never outlives one call; every call is bounded by its deadline.

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "netloader/status.h"

namespace netloader::registry {

using Clock = std::chrono::steady_clock;

struct KeyValue {
  std::string key;
  std::string value;
};

class Etcd {
 public:
  // `url`: "http://HOST:PORT" (an etcd client URL), optionally followed by a path that becomes
  // the key prefix ("http://etcd:2379/fleet-a" keeps the records under "/fleet-a/"; default
  // "/netloader/"). Errors: InvalidArgument naming what is wrong.
  static Result<Etcd> Parse(const std::string& url);

  const std::string& url() const { return url_; }
  const std::string& prefix() const { return prefix_; }  // begins and ends with '/'

  // A lease of `ttl_seconds`: its id.
  Result<int64_t> Grant(int ttl_seconds, Clock::time_point deadline) const;
  // Renews `lease`: the seconds it has left, 0 when etcd no longer knows it (it expired).
  Result<int64_t> KeepAlive(int64_t lease, Clock::time_point deadline) const;
  Status Revoke(int64_t lease, Clock::time_point deadline) const;
  // Writes `key` (under no prefix: give the whole key), attached to `lease` (0: none). A lease
  // that expired meanwhile is NotFound.
  Status Put(const std::string& key, const std::string& value, int64_t lease,
             Clock::time_point deadline) const;
  // Writes `key` attached to `lease` only if no such key exists (one transaction): true when
  // this call wrote it, false when the key was there already. A lease that expired is NotFound.
  Result<bool> PutIfAbsent(const std::string& key, const std::string& value, int64_t lease,
                           Clock::time_point deadline) const;
  // Every key beginning with `prefix`, with its value.
  Result<std::vector<KeyValue>> Range(const std::string& prefix, Clock::time_point deadline) const;

 private:
  // POSTs `body` (JSON) to `path` and returns the JSON answer's text. Errors: Unavailable (no
  // connection, or etcd answered an error: its message), Timeout.
  // Counted in netloader_registry_operations_total.
  Result<std::string> Call(const std::string& path, const std::string& body,
                           Clock::time_point deadline) const;
  Result<std::string> Exchange(const std::string& path, const std::string& body,
                               Clock::time_point deadline) const;

  std::string url_;
  std::string host_;
  std::string port_;
  std::string prefix_;
};

std::string Base64(const std::string& bytes);
// Decodes standard base64; false on a character outside it.
bool FromBase64(const std::string& text, std::string* bytes);

}  // namespace netloader::registry
