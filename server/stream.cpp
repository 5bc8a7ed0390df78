#include "server/stream.h"

#include "netloader/src/protocol/wire.h"

namespace netloader::serving {

Stream::Stream(ModelView tensors, uint64_t chunk_bytes, const Manifest& manifest)
    : view(std::move(tensors)), plan(view, chunk_bytes) {
  wire::Envelope manifest_part;
  ToWire(manifest, manifest_part.mutable_accept()->mutable_manifest());
  accept_manifest_bytes = Encode(manifest_part);
}

std::shared_ptr<const Stream> StreamCache::Find(const std::vector<size_t>& selected) {
  for (auto it = selections_.begin(); it != selections_.end(); ++it) {
    if (it->first != selected) continue;
    selections_.splice(selections_.begin(), selections_, it);
    return it->second;
  }
  return nullptr;
}

void StreamCache::Add(const std::vector<size_t>& selected, std::shared_ptr<const Stream> stream) {
  selections_.emplace_front(selected, std::move(stream));
  if (selections_.size() > kCapacity) selections_.pop_back();
}

}  // namespace netloader::serving
