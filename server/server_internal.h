#pragma once

#include <memory>

#include "netloader/server.h"
#include "netloader/src/stream/manifest.h"
#include "transfer/transport.h"

namespace netloader::internal {

// Server::Start (or, with `relay`, Server::StartRelay) on a given data plane (MPI; tests: the
// in-process one, and fault-injecting wrappers).
Result<std::unique_ptr<Server>> StartServer(ServerOptions options, ModelView model,
                                            const std::shared_ptr<transfer::DataPlane>& plane,
                                            bool relay = false);

// What a Load tells the relay over its destination (ClientOptions::relay) as it goes.
// Thread-safe.
class RelayFeed {
 public:
  // The source's manifest, once it is attached: the relay serves that stream from now on (the
  // same one when the weights are the same; other weights drop what it held).
  virtual Status Adopt(const Manifest& manifest) = 0;
  // Stream bytes [begin, end) verified in the destination: the relay may send them.
  virtual void Held(uint64_t begin, uint64_t end) = 0;
  // The load's outcome: OK (every byte held), or why it failed.
  virtual void LoadEnded(const Status& status) = 0;
  // The tensors the relay serves (the Load's destination must be these).
  virtual const ModelView& relayed_model() const = 0;

 protected:
  ~RelayFeed() = default;
};

// `server`'s feed when it was started by Server::StartRelay; nullptr otherwise.
RelayFeed* RelayFeedOf(Server& server);

}  // namespace netloader::internal
