#pragma once

// A holder's presence in the registry: its record under an etcd lease, kept alive and up to
// date on a thread of its own (DESIGN.md, "The registry").

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "netloader/src/registry/etcd.h"
#include "netloader/src/registry/record.h"

namespace netloader::registry {

// How often a publisher looks at its holder's state (what it publishes follows within this),
// and how long it waits before trying an unreachable etcd again.
inline constexpr std::chrono::milliseconds kPublishTick{500};

class Publisher {
 public:
  // Publishes `snapshot()` (called on the publisher's thread: it must be thread-safe) under a
  // lease of `ttl`, renewed every ttl / 3, and again whenever it changes. etcd need not be up:
  // while it is unreachable the publisher logs one warning and retries every tick; a lease that
  // expired meanwhile is granted anew and the record published again. It never gives up.
  // Errors: InvalidArgument (a bad URL, a TTL under 2 s).
  static Result<std::unique_ptr<Publisher>> Start(const std::string& url, std::chrono::seconds ttl,
                                                  std::function<Record()> snapshot);
  ~Publisher();
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Claims `name` (a key under the registry's prefix) for this holder: written with `value`
  // under the holder's lease unless another process holds it, so it lasts as long as this
  // holder is listed (a holder that dies or freezes loses it with its lease). True when claimed
  // now or before. A claim lost with an expired lease is not taken again. Errors: etcd's
  // (Unavailable, Timeout).
  Result<bool> Claim(const std::string& name, const std::string& value);

  // Stops publishing and revokes the lease, so the record is gone at once (within 1 s; if etcd
  // does not answer, the record expires with its lease). Idempotent.
  void Stop();

 private:
  Publisher(Etcd etcd, std::chrono::seconds ttl, std::function<Record()> snapshot);
  void Run();
  // One round: grant a lease if there is none, put the record if it changed, renew the lease
  // when due. Errors: etcd's. With lease_mu_ held.
  Status Round();
  // A lease, granted now if there is none. With lease_mu_ held.
  Status EnsureLease();
  void Reached(const Status& status);  // logs etcd becoming unreachable or reachable again

  const Etcd etcd_;
  const std::chrono::seconds ttl_;
  const std::function<Record()> snapshot_;
  // Guards the lease and what was put under it: the publisher's thread and Claim use them.
  std::mutex lease_mu_;
  int64_t lease_ = 0;
  std::string published_;             // the value last put under the current lease
  std::vector<std::string> claimed_;  // the names claimed under the current lease
  Clock::time_point renew_at_{};
  bool reachable_ = true;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace netloader::registry
