#include "tests/bench/machine.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "netloader/src/base/host_memory.h"
#include "netloader/src/base/xxh3.h"
#include "tests/bench/usage.h"

namespace netloader::bench {
namespace {

using json = nlohmann::json;

// Two streams of 1 GiB each, in 4 MiB writes.
constexpr size_t kBlock = 4 << 20, kTotal = 1ull << 30;

// XXH3 over a warm 128 KiB block, as the client hashes each staged chunk: the CPU cost of
// checksums without the transfer's noise.
double HashGbps() {
  std::vector<char> block(128 << 10);
  for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 31);
  constexpr int kRounds = 4096;  // 512 MiB
  volatile uint64_t sink = 0;    // keeps the hashing from being optimised away
  const auto start = Clock::now();
  for (int r = 0; r < kRounds; ++r) sink = sink + XXH3_64bits(block.data(), block.size());
  const double seconds = Since(start);
  return kRounds * block.size() / seconds / 1e9;
}

// A listening socket on 127.0.0.1, a free port (written to *address); -1 when there is none.
// Neither accept nor a read on it waits more than 10 s (SO_RCVTIMEO covers both, and is
// inherited by the accepted socket): a writer that failed to connect or stalled ends the
// measurement.
int ListenOnLoopback(sockaddr_in* address) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  address->sin_family = AF_INET;
  address->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof *address;
  if (bind(listener, reinterpret_cast<sockaddr*>(address), length) != 0 ||
      listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(address), &length) != 0) {
    close(listener);
    return -1;
  }
  const timeval deadline{10, 0};
  setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &deadline, sizeof deadline);
  return listener;
}

// The writer's side: both streams, back to back, to `address`.
void WriteStreams(const sockaddr_in& address) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0) {
    std::vector<char> block(kBlock, 1);
    for (size_t sent = 0; sent < 2 * kTotal;) {
      // MSG_NOSIGNAL: a reader that gave up and closed is an error here, not a SIGPIPE.
      const ssize_t n = send(fd, block.data(), std::min(kBlock, 2 * kTotal - sent), MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
  }
  close(fd);
}

// The first stream read into one reused block: what the loopback carries before any MPI
// (machines of one kind differ here).
double ReadGbps(int fd) {
  std::vector<char> block(kBlock);
  size_t received = 0;
  const auto start = Clock::now();
  for (ssize_t n; received < kTotal &&
                  (n = read(fd, block.data(), std::min(kBlock, kTotal - received))) > 0;) {
    received += n;
  }
  return received / Since(start) / 1e9;
}

bool ReadFully(int fd, char* to, size_t size) {
  for (size_t got = 0; got < size;) {
    const ssize_t n = read(fd, to + got, size - got);
    if (n <= 0) return false;
    got += static_cast<size_t>(n);
  }
  return true;
}

// The second stream read chunk by chunk into fresh memory, as a client receives in place, each
// chunk hashed once it is complete, timing the hashing only. Right after the kernel's socket
// copy a chunk is not warm in cache: this is what checksums cost a load, and what HashGbps (a
// warm block) does not show. 0 when nothing was hashed.
double HashReceivedGbps(int fd, uint64_t chunk_bytes) {
  auto* destination = static_cast<char*>(MapHostMemory(kTotal));
  const size_t chunk = std::min<size_t>(std::max<uint64_t>(chunk_bytes, 4096), kTotal);
  double hash_seconds = 0;
  volatile uint64_t sink = 0;  // keeps the hashing from being optimised away
  size_t hashed = 0;
  while (destination != nullptr && hashed < kTotal) {
    const size_t size = std::min(chunk, kTotal - hashed);
    if (!ReadFully(fd, destination + hashed, size)) break;
    const auto hash_start = Clock::now();
    sink = sink + XXH3_64bits(destination + hashed, size);
    hash_seconds += Since(hash_start);
    hashed += size;
  }
  UnmapHostMemory(destination, kTotal);
  return hash_seconds > 0 ? hashed / hash_seconds / 1e9 : 0;
}

struct Loopback {
  double tcp_gbps = 0;
  double hash_received_gbps = 0;
};

// Raw TCP over loopback between two threads: the first stream timed as it is read, the second
// hashed as it arrives.
Loopback MeasureLoopback(uint64_t chunk_bytes) {
  sockaddr_in address{};
  const int listener = ListenOnLoopback(&address);
  if (listener < 0) return {};
  std::thread writer(WriteStreams, address);
  Loopback result;
  const int fd = accept(listener, nullptr, nullptr);
  if (fd >= 0) {
    result.tcp_gbps = ReadGbps(fd);
    result.hash_received_gbps = HashReceivedGbps(fd, chunk_bytes);
  }
  close(fd);  // first: a writer still sending then fails instead of blocking the join
  writer.join();
  close(listener);
  return result;
}

// The CPU's description from /proc/cpuinfo (its first processor), and the cache sizes of the
// first core from sysfs.
json DescribeCpu() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string model, flags, family, number;
  for (std::string line; std::getline(cpuinfo, line) && flags.empty();) {
    auto value = [&] { return line.substr(line.find(':') + 2); };
    if (model.empty() && line.rfind("model name", 0) == 0) model = value();
    if (family.empty() && line.rfind("cpu family", 0) == 0) family = value();
    if (number.empty() && line.rfind("model\t", 0) == 0) number = value();
    if (line.rfind("flags", 0) == 0) flags = " " + value() + " ";
  }
  json vector = json::array();
  for (const char* f : {"sse4_2", "avx", "avx2", "avx512f", "avx512bw", "avx512vl"}) {
    if (flags.find(std::string(" ") + f + " ") != std::string::npos) vector.push_back(f);
  }
  json caches = json::object();
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
    std::string level, size;
    if (!(std::ifstream(dir + "/level") >> level) || !(std::ifstream(dir + "/size") >> size)) {
      break;
    }
    if (level == "2" || level == "3") caches["l" + level] = size;
  }
  return {{"cpu", model},
          {"cpu_family_model", family + "/" + number},
          {"caches", caches},
          {"vector_extensions", vector}};
}

}  // namespace

json MachineRecord(uint64_t chunk_bytes) {
  const double hash_gbps = HashGbps();
  const Loopback loopback = MeasureLoopback(chunk_bytes);
  json machine = DescribeCpu();
  machine["hash_gbps"] = hash_gbps;
  machine["hash_received_gbps"] = loopback.hash_received_gbps;
  machine["loopback_tcp_gbps"] = loopback.tcp_gbps;
  return machine;
}

void PrintMachine(const json& machine) {
  std::string extensions;
  for (const auto& e : machine["vector_extensions"]) {
    extensions += (extensions.empty() ? "" : " ") + e.get<std::string>();
  }
  std::string caches;
  for (const auto& [level, size] : machine["caches"].items()) {
    caches += ", " + level + " " + size.get<std::string>();
  }
  std::printf(
      "\nmachine: %s (family/model %s), %u cores (%s%s); XXH3 %.1f GB/s warm, %.1f GB/s on "
      "data just received; loopback TCP %.2f GB/s\n",
      machine["cpu"].get<std::string>().c_str(),
      machine["cpu_family_model"].get<std::string>().c_str(), std::thread::hardware_concurrency(),
      extensions.c_str(), caches.c_str(), machine["hash_gbps"].get<double>(),
      machine["hash_received_gbps"].get<double>(), machine["loopback_tcp_gbps"].get<double>());
}

}  // namespace netloader::bench
