#include "tests/bench/fatal.h"

#include <cstdio>
#include <cstdlib>

namespace netloader::bench {
namespace {

// What must be undone even when the run dies (the simulated hosts).
std::function<void()> g_cleanup;

}  // namespace

void Die(const std::string& what) {
  std::fprintf(stderr, "netloader-bench: %s\n", what.c_str());
  if (g_cleanup) g_cleanup();
  std::exit(1);
}

void SetCleanup(std::function<void()> cleanup) { g_cleanup = std::move(cleanup); }

void Check(const Status& status, const std::string& what) {
  if (!status.ok()) Die(what + ": " + status.ToString());
}

}  // namespace netloader::bench
