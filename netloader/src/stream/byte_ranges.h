#pragma once

#include <cstdint>
#include <map>

namespace netloader {

// Byte ranges of a model's stream (its tensors' bytes concatenated in storage order, which the
// chunks cut in order) merged into disjoint intervals: what a client holds verified, kept across
// sources so that a load resumes where a failed source stopped.
class ByteRanges {
 public:
  void Add(uint64_t begin, uint64_t end);
  bool Covers(uint64_t begin, uint64_t end) const;
  // Whether any byte of [begin, end) is in a range.
  bool Intersects(uint64_t begin, uint64_t end) const;
  void Remove(uint64_t begin, uint64_t end);
  uint64_t bytes() const;
  void Clear() { ranges_.clear(); }
  // Calls f(begin, end) for each range, in order.
  template <typename F>
  void ForEach(F f) const {
    for (const auto& [begin, end] : ranges_) f(begin, end);
  }

 private:
  std::map<uint64_t, uint64_t> ranges_;  // begin -> end; disjoint and not touching
};

}  // namespace netloader
