#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace netloader::transfer {

// A piece of memory that belongs to one chunk.
struct Span {
  void* data = nullptr;
  size_t size = 0;
};

// The messages of one stream, in order. Each chunk is an ordered list of spans that travel as one
// message: a slice of one large tensor, or several small tensors coalesced. Both sides build the
// same list over their own memory.
class ChunkList {
 public:
  // Starts a new, empty chunk; spans added next belong to it.
  void BeginChunk() {
    starts_.push_back(spans_.size());
    bytes_.push_back(0);
  }
  // A span that starts where the chunk's previous one ends extends it: tensors that lie back to
  // back in memory then travel without being gathered (a server sends single-span chunks in
  // place).
  void AddSpan(void* data, size_t size) {
    bytes_.back() += size;
    if (spans_.size() > starts_.back()) {
      Span& last = spans_.back();
      if (static_cast<char*>(last.data) + last.size == data) {
        last.size += size;
        return;
      }
    }
    spans_.push_back({data, size});
  }

  size_t size() const { return starts_.size(); }
  bool empty() const { return starts_.empty(); }
  const Span* spans(size_t chunk) const { return spans_.data() + starts_[chunk]; }
  size_t span_count(size_t chunk) const {
    return (chunk + 1 < starts_.size() ? starts_[chunk + 1] : spans_.size()) - starts_[chunk];
  }
  uint64_t bytes(size_t chunk) const { return bytes_[chunk]; }

  // The listed chunks, in the order listed, as a list of their own (position p is chunk
  // chunks[p] of this one).
  ChunkList Select(const std::vector<size_t>& chunks) const {
    ChunkList out;
    for (size_t c : chunks) {
      out.starts_.push_back(out.spans_.size());
      out.bytes_.push_back(bytes_[c]);
      out.spans_.insert(out.spans_.end(), spans(c), spans(c) + span_count(c));
    }
    return out;
  }

 private:
  std::vector<Span> spans_;
  std::vector<size_t> starts_;   // index of each chunk's first span
  std::vector<uint64_t> bytes_;  // each chunk's byte count
};

}  // namespace netloader::transfer
