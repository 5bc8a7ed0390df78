#pragma once

// What a process used: wall time, CPU time, memory. The roles report their own; the
// orchestrator reads the server role's from /proc.

#include <sys/types.h>

#include <chrono>

namespace netloader::bench {

using Clock = std::chrono::steady_clock;

// Seconds from `start` to now.
inline double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// This process's peak resident set, KiB.
long MaxRssKiB();

// CPU seconds (user + system, every thread) this process has used.
double CpuSeconds();

// The same for another process, from /proc/PID/stat; 0 when it cannot be read.
double ProcessCpuSeconds(pid_t pid);

// The KiB figure of the line starting with `key` (e.g. "VmRSS:") in /proc/PID/status; 0 when
// there is none.
long ProcessStatusKiB(pid_t pid, const char* key);

}  // namespace netloader::bench
