#pragma once

// The default bench, on this machine: netloader against raw MPI, disk and itself. A generated
// Llama-shaped checkpoint (or --checkpoint) served by one serve role; per repetition, in fresh
// processes and in an order rotated by one each time: raw MPI (the ceiling), netloader end to
// end (MPI started beforehand, while allocating, or inside the load; the rendezvous configured
// or adopted; checksums on or off; received in place), disk (warm and cold). Then K concurrent
// clients against K raw streams, the fixed overhead by tensor count, memory, and the
// chunk-granular loads (resume, delta, partial). --focus: the first four rows only.

#include "tests/bench/options.h"

namespace netloader::bench {

// Runs the bench, prints its report (local_report.h) and writes --json; returns the exit status.
// Dies (fatal.h) when a process it starts fails.
int RunLocalBench(const Options& options);

}  // namespace netloader::bench
