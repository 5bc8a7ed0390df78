#pragma once

// What a server serves, and, on a relay, how much of it the relay's own load has verified.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "netloader/src/stream/chunk_stream.h"
#include "netloader/src/stream/manifest.h"
#include "netloader/status.h"
#include "netloader/tensor.h"
#include "server/stream.h"

namespace netloader::serving {

// The served content: the manifest and the whole model's stream, the streams of recent partial
// loads, and a relay's progress (the bytes its own load verified, or why that load failed). A
// server over loaded weights holds everything from the start and never changes; a relay
// (Server::StartRelay) learns its stream when its load adopts its source's manifest, and may
// switch to other weights, which starts a new content generation.
// Thread-safe: the control thread reads it (Now, Selected), session threads wait on it
// (WaitHeld), the relay's load changes it (Adopt, Held, LoadEnded: internal::RelayFeed, from
// the sources' threads) and so may the host (MarkLoaded, any thread).
class RelayState {
 public:
  // Over `model`, which must outlive this. With `manifest` (its digests at its chunk size), a
  // server over loaded weights; without, a relay that serves nothing until Adopt. `chunk_bytes`
  // (ServerOptions) cuts the streams this server makes itself; `stall_timeout` bounds WaitHeld;
  // `endpoint` names the server in logs.
  RelayState(const ModelView& model, std::optional<Manifest> manifest, uint64_t chunk_bytes,
             std::chrono::milliseconds stall_timeout, std::string endpoint);

  bool relay() const { return relay_; }
  // TableDigest of the served model.
  const std::string& table_digest() const { return table_digest_; }

  // The state at one moment.
  struct Snapshot {
    std::shared_ptr<const Stream> whole;  // the whole model's stream; null until known
    uint64_t generation = 0;              // the content generation `whole` belongs to
    bool complete = false;                // every byte held and verified
    std::string failure;                  // why a relay's own load failed (until MarkLoaded)
    uint64_t bytes_held = 0;              // stream bytes a relay's own load verified
  };
  Snapshot Now() const;

  // The stream of a partial load's selected tensors (`selected`: indices into the model in
  // stream order; `view`: those tensors), from the cache or made now, under the lock (its
  // digests take a pass over the chunks that coalesce small tensors).
  std::shared_ptr<const Stream> Selected(const std::vector<size_t>& selected, ModelView view);

  // Before chunk `chunk` (stream bytes `range`) of a session of content generation `generation`
  // is posted, on a relay: blocks until the relay's own load verified those bytes, up to the
  // stall timeout. Errors: Unavailable (the content changed, or the relay's load failed),
  // Cancelled (`abort` became true), Timeout. Polls `abort` every 50 ms.
  Status WaitHeld(uint64_t generation, std::pair<uint64_t, uint64_t> range, size_t chunk,
                  const std::atomic<bool>& abort);

  // Server::MarkLoaded: the host filled the model otherwise; computes its digests (a pass over
  // the memory, outside the lock) and serves all of it.
  Status MarkLoaded();
  // internal::RelayFeed, for a load filling this relay's model.
  Status Adopt(const Manifest& manifest);
  void Held(uint64_t begin, uint64_t end);
  void LoadEnded(const Status& status);

 private:
  // Serves `manifest` over model_ from now on: a new content generation, whose sessions are the
  // only ones that may go on streaming. Caller holds mu_ (or is the constructor).
  void Install(Manifest manifest, std::shared_ptr<const Stream> stream = nullptr);

  const ModelView& model_;
  const bool relay_;  // started over a model still loading (Server::StartRelay)
  const uint64_t chunk_bytes_;
  const std::chrono::milliseconds stall_timeout_;
  const std::string endpoint_;
  const std::string table_digest_;

  // Changed by a relay's own load (its sources' threads) and by MarkLoaded; waited on by the
  // session threads (held_cv_, notified on every change).
  mutable std::mutex mu_;  // guards the fields below
  std::condition_variable held_cv_;
  Manifest manifest_;                    // the whole model's digests
  std::shared_ptr<const Stream> whole_;  // the whole model in storage order; null until known
  StreamCache selections_;               // recent partial loads' streams (served once complete)
  uint64_t generation_ = 0;              // bumped by every Install: other content, other sessions
  bool complete_;                        // every byte held and verified
  ByteRanges held_;                      // a relay's stream bytes its own load verified
  std::string load_failure_;             // why a relay's own load failed (until MarkLoaded)
};

}  // namespace netloader::serving
