#pragma once

// Across simulated hosts (scripts/netns-hosts.sh; root only): three source hosts whose NICs are
// capped at --host-mbit and a client host with four times that. Per repetition: raw MPI across
// one capped link, then netloader from 1, 2 and 3 sources at once (--stripe); ratios against raw
// MPI and against S x the cap.

#include "tests/bench/options.h"

namespace netloader::bench {

// Runs the bench, prints its table and writes --json; returns the exit status. Dies (fatal.h)
// when the hosts cannot be built or a process fails, removing the hosts first.
int RunHostsBench(const Options& options);

}  // namespace netloader::bench
