#pragma once

// The one clock netloader measures and sets deadlines with, and its conversions.

#include <chrono>
#include <cstdint>

namespace netloader {

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Milliseconds on Clock, for a time kept in an atomic integer.
inline int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

}  // namespace netloader
