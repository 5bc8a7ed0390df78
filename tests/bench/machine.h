#pragma once

// The machine record: what a report needs to be compared with one from another machine. GB/s
// moves between machines of one kind; the CPU, its vector extensions and caches, the hashing
// speed and the loopback's explain much of why.

#include <cstdint>
#include <nlohmann/json.hpp>

namespace netloader::bench {

// Measures and describes this machine: "cpu" and "cpu_family_model" (from /proc/cpuinfo; the
// family and model numbers name the microarchitecture where a VM reports only "AMD EPYC"),
// "vector_extensions" (those that decide hashing speed), "caches" (the first core's L2 and the
// L3, as sysfs gives them, e.g. "512K"), "hash_gbps" (XXH3 over a warm block),
// "hash_received_gbps" (XXH3 over data just received in `chunk_bytes` pieces; 0 when that could
// not be measured) and "loopback_tcp_gbps". Takes a few seconds (512 MiB hashed, 2 GiB over
// loopback); each socket wait has a 10 s deadline.
nlohmann::json MachineRecord(uint64_t chunk_bytes);

// The record's one-line summary, as the local bench prints it.
void PrintMachine(const nlohmann::json& machine);

}  // namespace netloader::bench
