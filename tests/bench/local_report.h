#pragma once

// The local bench's report: tables of medians and paired ratios on stdout, and with --json the
// same with every sample. Its keys are read by tests and scripts/profile-bench.py.

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "tests/bench/options.h"
#include "tests/bench/samples.h"

namespace netloader::bench {

// What the local bench measured besides its samples.
struct LocalRun {
  uint64_t bytes = 0;              // the model's tensor bytes
  size_t tensors = 0;              // and its tensor count
  std::vector<int> ks;             // the concurrent rows' client counts
  std::vector<int> tiny_counts;    // the overhead rows' tensor counts
  long server_rss_before_kib = 0;  // the server's RSS before the concurrent rows (not --focus)
  long server_hwm_kib = 0;         // and its peak after them
};

// Measures the machine (machine.h), prints the report, writes options.json_path when set;
// returns the exit status (0). With options.focus, only the rows --focus runs.
int ReportLocal(const Options& options, const Samples& samples, const LocalRun& run);

// netloader's disk load against cat (page cache) and dd (cold), paired: printed, and added to
// `summary` as disk_warm_vs_cat and disk_cold_vs_dd. Needs the rows disk_warm, cat_warm,
// disk_cold and dd_cold.
void ReportDiskVsTools(const Samples& samples, nlohmann::json* summary);

}  // namespace netloader::bench
