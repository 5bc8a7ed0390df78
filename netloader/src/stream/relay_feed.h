#pragma once

// The seam between a load and the relay that serves its destination while it fills
// (ClientOptions::relay): the client drives a RelayFeed, the server implements it. Neither side
// includes the other.

#include <cstdint>
#include <string>

#include "netloader/server.h"
#include "netloader/src/stream/manifest.h"
#include "netloader/status.h"
#include "netloader/tensor.h"

namespace netloader::internal {

// What a load tells the relay over its destination as it goes. Thread-safe: the sources of a
// striped load call it from their own threads.
class RelayFeed {
 public:
  // The source's manifest, once it is attached: the relay serves that stream from now on (the
  // same one when the weights are the same; other weights drop what it held).
  virtual Status Adopt(const Manifest& manifest) = 0;
  // Stream bytes [begin, end) verified in the destination: the relay may send them.
  virtual void Held(uint64_t begin, uint64_t end) = 0;
  // The load's outcome: OK (every byte held), or why it failed.
  virtual void LoadEnded(const Status& status) = 0;
  // A cold start (ClientOptions::cold_start_wait): claims `name`, a key under the registry's
  // prefix, for this relay, under the lease its registry record lives by. True when this relay
  // holds the claim; false when another process does, or this relay publishes in no registry.
  // Errors: etcd's.
  virtual Result<bool> ClaimInRegistry(const std::string& name) = 0;
  // The tensors the relay serves (the load's destination must be these).
  virtual const ModelView& relayed_model() const = 0;
  // Whether this server was started by Server::StartRelay (only then does it take a feed).
  virtual bool relaying() const = 0;

 protected:
  ~RelayFeed() = default;
};

// `server`'s feed when it was started by Server::StartRelay; nullptr otherwise. A server that
// can relay implements RelayFeed beside Server, so a cross-cast finds it without naming it.
inline RelayFeed* RelayFeedOf(Server& server) {
  auto* feed = dynamic_cast<RelayFeed*>(&server);
  return feed != nullptr && feed->relaying() ? feed : nullptr;
}

}  // namespace netloader::internal
