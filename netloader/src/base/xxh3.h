#pragma once

// XXH3 through libxxhash's run-time CPU dispatch: the XXH3_* calls below this include use AVX2
// or AVX-512 where the CPU has them. Same digests as the plain entry points, which Debian's
// library builds for SSE2 only: 14 GB/s there against 57 GB/s dispatched on these machines,
// which took checksums from ~10 % of a load at 1.7 GB/s to ~3 % (BENCHMARKS.md).
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h>
#endif

#include <memory>

namespace netloader {

// An XXH3 streaming state, freed with its owner.
struct Xxh3StateDeleter {
  void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
};
using Xxh3State = std::unique_ptr<XXH3_state_t, Xxh3StateDeleter>;

}  // namespace netloader
