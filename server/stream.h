#pragma once

// What a session streams, and the cache of the streams of recent partial loads.

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "netloader/src/stream/chunk_stream.h"
#include "netloader/src/stream/manifest.h"
#include "netloader/tensor.h"

namespace netloader::serving {

// What a session streams: the whole model, or the tensors a partial load selected (in name
// order), cut into chunks once, with the manifest part of its Accept serialized once. Protobuf
// merges concatenated serializations of a message (nested messages field by field), so each
// Accept is these bytes followed by the small per-client part: no per-client copy.
// Immutable once made: any thread may read it (every session streaming it shares it).
struct Stream {
  Stream(ModelView tensors, uint64_t chunk_bytes, const Manifest& manifest);

  const ModelView view;
  const SendPlan plan;
  std::string accept_manifest_bytes;  // Envelope{accept{manifest}}
};

// The streams of recent partial loads, by the tensors selected, most recently used first.
// Not thread-safe: RelayState keeps it under its lock, and empties it when the content changes.
class StreamCache {
 public:
  // The clients of one pipeline stage or expert group ask for the same tensors, and a stream's
  // digests cost a pass over the chunks that coalesce small tensors.
  static constexpr size_t kCapacity = 8;

  // The stream of `selected` (indices into the served model, in stream order), now the most
  // recently used; null when it is not cached.
  std::shared_ptr<const Stream> Find(const std::vector<size_t>& selected);
  // Caches `stream` as the most recently used; the least recently used beyond kCapacity goes.
  void Add(const std::vector<size_t>& selected, std::shared_ptr<const Stream> stream);
  void Clear() { selections_.clear(); }

 private:
  std::list<std::pair<std::vector<size_t>, std::shared_ptr<const Stream>>> selections_;
};

}  // namespace netloader::serving
