#pragma once

// A burst across simulated hosts (scripts/netns-hosts.sh; root only), every host's NIC capped at
// the same rate: one seed on host 0 and K = 1, 2, 4, ... new instances on hosts 1..K, started
// at once. T(K) is from their start until the last one has verified every byte. Three ways,
// per repetition: relay (the shipped netloader-server and netloader-client --serve: a chain
// built by redirects), direct (everyone from the seed: --fanout 0, no --serve) and storage
// (every instance reads the files from one host over TCP, as from one NFS server). The seed's
// egress is its NIC's transmitted bytes over the model's.

#include "tests/bench/options.h"

namespace netloader::bench {

// Runs the bench, prints its table and writes --json; returns the exit status. Dies (fatal.h)
// when the hosts cannot be built or a process fails, stopping the burst and removing the hosts
// first.
int RunFanoutBench(const Options& options);

}  // namespace netloader::bench
