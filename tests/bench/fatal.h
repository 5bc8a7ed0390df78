#pragma once

// How the bench fails: an error anywhere ends the whole run with one line on stderr, after
// undoing what must not outlive it (the simulated hosts). Every measurement is a fresh process,
// so there is nothing to recover.

#include <functional>
#include <string>
#include <utility>

#include "netloader/status.h"

namespace netloader::bench {

// Prints "netloader-bench: `what`" to stderr, runs the cleanup SetCleanup installed, exits 1.
[[noreturn]] void Die(const std::string& what);

// What Die runs before exiting (nullptr: nothing). Main thread only.
void SetCleanup(std::function<void()> cleanup);

// The value of `result`, or Die with "`what`: " and its status.
template <typename T>
T Check(Result<T> result, const std::string& what) {
  if (!result.ok()) Die(what + ": " + result.status().ToString());
  return std::move(result).value();
}

// Die with "`what`: " and `status` unless it is OK.
void Check(const Status& status, const std::string& what);

}  // namespace netloader::bench
