#include "tests/bench/raw_mpi_roles.h"

#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <deque>
#include <iostream>
#include <nlohmann/json.hpp>

#include "netloader/safetensors.h"
#include "netloader/src/base/host_memory.h"
#include "tests/bench/checkpoints.h"
#include "tests/bench/fatal.h"
#include "tests/bench/usage.h"
#include "tests/support/test_util.h"

namespace netloader::bench {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// `bytes` in messages of `chunk` to (or from) every peer, at most `window` per peer in flight,
// as netloader's data plane sends them.
void Stream(MPI_Comm* comms, int peers, char* data, uint64_t bytes, uint64_t chunk, int window,
            bool sending) {
  std::deque<MPI_Request> in_flight;
  for (uint64_t offset = 0; offset < bytes; offset += chunk) {
    const int count = static_cast<int>(std::min(chunk, bytes - offset));
    for (int p = 0; p < peers; ++p) {
      MPI_Request request;
      if (sending) {
        MPI_Isend(data + offset, count, MPI_BYTE, 0, 1, comms[p], &request);
      } else {
        MPI_Irecv(data + offset, count, MPI_BYTE, 0, 1, comms[p], &request);
      }
      in_flight.push_back(request);
    }
    while (in_flight.size() >= static_cast<size_t>(window * peers)) {
      MPI_Wait(&in_flight.front(), MPI_STATUS_IGNORE);
      in_flight.pop_front();
    }
  }
  for (MPI_Request& r : in_flight) MPI_Wait(&r, MPI_STATUS_IGNORE);
}

// One contiguous copy of the model's tensor bytes, written by the kernel (pread), like a
// server's memory.
char* ReadContiguous(const std::string& path,
                     const std::vector<std::pair<uint64_t, uint64_t>>& ranges, uint64_t bytes) {
  char* data = static_cast<char*>(MapHostMemory(std::max<uint64_t>(bytes, 1)));
  int fd = open(path.c_str(), O_RDONLY);
  uint64_t at = 0;
  for (auto& [offset, size] : ranges) {
    if (pread(fd, data + at, size, static_cast<off_t>(offset)) != static_cast<ssize_t>(size)) {
      Die("pread");
    }
    at += size;
  }
  close(fd);
  return data;
}

// One port per receiver (PORT_FILE.i), as a netloader server opens one per session: receivers
// that connect to one port at the same moment can wedge in Open MPI's PMIx lookup (DESIGN.md).
std::vector<std::array<char, MPI_MAX_PORT_NAME>> OpenPorts(const std::string& port_file,
                                                           int peers) {
  std::vector<std::array<char, MPI_MAX_PORT_NAME>> ports(peers);
  for (int p = 0; p < peers; ++p) {
    MPI_Open_port(MPI_INFO_NULL, ports[p].data());
    PublishFile(port_file + "." + std::to_string(p), std::string(ports[p].data()) + "\n");
  }
  return ports;
}

// Raw MPI runs in this process, whatever netloader's rows use.
TransportOptions InProcess(const RoleArgs& args) {
  TransportOptions options = Transport(args);
  options.mpi_helpers = false;
  return options;
}

}  // namespace

int RoleRawSend(const RoleArgs& args) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  const uint64_t bytes = FileDataBytes(args.models.at(0), &ranges);
  auto layout = Check(ReadCheckpointLayout(args.models.at(0)), "layout");
  auto model = Check(HostModel::Load(layout), "load");  // a server's memory use
  char* data = ReadContiguous(layout.shards[0].path, ranges, bytes);
  Check(InitializeTransport(InProcess(args)), "MPI");
  auto ports = OpenPorts(args.port_file, args.peers);
  std::vector<MPI_Comm> comms(args.peers);
  for (int p = 0; p < args.peers; ++p) {
    MPI_Comm_accept(ports[p].data(), MPI_INFO_NULL, 0, MPI_COMM_SELF, &comms[p]);
  }
  const double cpu_before = CpuSeconds();
  Stream(comms.data(), args.peers, data, bytes, args.chunk_bytes, args.window, true);
  const double cpu_seconds = CpuSeconds() - cpu_before;
  for (MPI_Comm& c : comms) MPI_Comm_disconnect(&c);
  for (auto& port : ports) MPI_Close_port(port.data());
  std::cout << json{{"cpu_seconds", cpu_seconds}, {"max_rss_kib", MaxRssKiB()}}.dump() << std::endl;
  return 0;
}

int RoleRawRecv(const RoleArgs& args) {
  const uint64_t bytes = FileDataBytes(args.models.at(0));
  auto layout = Check(ReadCheckpointLayout(args.models.at(0)), "layout");
  auto model = Check(HostModel::Allocate(layout), "allocate");  // same kind of memory
  char* data = static_cast<char*>(MapHostMemory(std::max<uint64_t>(bytes, 1)));
  const std::string port = testing::WaitForLine(args.port_file, 60s);
  if (port.empty()) Die("no port from raw-send");
  Check(InitializeTransport(InProcess(args)), "MPI");
  PopulateForWrite(data, std::max<uint64_t>(bytes, 1));  // as netloader's client does
  MPI_Comm comm;
  const auto connect_start = Clock::now();
  MPI_Comm_connect(port.c_str(), MPI_INFO_NULL, 0, MPI_COMM_SELF, &comm);
  const double connect_seconds = Since(connect_start);  // not part of the row: MPI's own cost
  const auto start = Clock::now();
  const double cpu_before = CpuSeconds();
  Stream(&comm, 1, data, bytes, args.chunk_bytes, args.window, false);
  const double seconds = Since(start);
  const double cpu_seconds = CpuSeconds() - cpu_before;
  MPI_Comm_disconnect(&comm);
  std::cout << json{{"seconds", seconds},
                    {"bytes", bytes},
                    {"connect", connect_seconds},
                    {"cpu_seconds", cpu_seconds},
                    {"max_rss_kib", MaxRssKiB()}}
                   .dump()
            << std::endl;
  return 0;
}

}  // namespace netloader::bench
