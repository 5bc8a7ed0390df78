#include "netloader/src/stream/byte_ranges.h"

namespace netloader {

void ByteRanges::Add(uint64_t begin, uint64_t end) {
  if (begin >= end) return;
  // Swallow every range that overlaps or touches [begin, end).
  auto it = ranges_.upper_bound(begin);
  if (it != ranges_.begin() && std::prev(it)->second >= begin) --it;
  while (it != ranges_.end() && it->first <= end) {
    begin = std::min(begin, it->first);
    end = std::max(end, it->second);
    it = ranges_.erase(it);
  }
  ranges_.emplace(begin, end);
}

bool ByteRanges::Covers(uint64_t begin, uint64_t end) const {
  if (begin >= end) return true;
  auto it = ranges_.upper_bound(begin);
  if (it == ranges_.begin()) return false;
  --it;
  return it->first <= begin && it->second >= end;
}

bool ByteRanges::Intersects(uint64_t begin, uint64_t end) const {
  if (begin >= end) return false;
  auto it = ranges_.lower_bound(end);  // the first range starting at or after `end`
  if (it == ranges_.begin()) return false;
  return std::prev(it)->second > begin;
}

void ByteRanges::Remove(uint64_t begin, uint64_t end) {
  if (begin >= end) return;
  auto it = ranges_.upper_bound(begin);
  if (it != ranges_.begin()) --it;
  while (it != ranges_.end() && it->first < end) {
    const uint64_t first = it->first, last = it->second;
    if (last <= begin) {
      ++it;
      continue;
    }
    it = ranges_.erase(it);
    if (first < begin) ranges_.emplace(first, begin);
    if (last > end) ranges_.emplace(end, last);
  }
}

uint64_t ByteRanges::bytes() const {
  uint64_t total = 0;
  for (const auto& [begin, end] : ranges_) total += end - begin;
  return total;
}

}  // namespace netloader
