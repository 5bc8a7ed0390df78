#pragma once

// What the in-process tests (server_client_test.cpp, relay_test.cpp) share: models that own
// their bytes, the in-process data plane, and options with short deadlines.

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "netloader/client.h"
#include "netloader/dtype.h"
#include "netloader/server.h"
#include "tests/support/inproc_transport.h"

namespace netloader {

using namespace std::chrono_literals;

// A model of `n` tensors of mixed dtypes, sizes drawn from a printed seed; owns its bytes.
struct OwnedModel {
  std::vector<std::vector<unsigned char>> storage;
  ModelView view;

  OwnedModel(int n, uint64_t seed, bool fill) {
    std::mt19937_64 rng(seed);
    const DType dtypes[] = {DType::kBF16, DType::kF32, DType::kI8, DType::kF64, DType::kBool};
    storage.resize(n);
    for (int i = 0; i < n; ++i) {
      const DType dtype = dtypes[i % 5];
      const int64_t elements = i == 0 ? 0 : (i == 1 ? 1 : static_cast<int64_t>(rng() % 70000));
      storage[i].resize(elements * DTypeSize(dtype));
      if (fill) {
        for (auto& b : storage[i]) b = static_cast<unsigned char>(rng());
      }
      view.tensors.push_back({"layer." + std::to_string(i), dtype,
                              i == 1 ? std::vector<int64_t>{} : std::vector<int64_t>{elements},
                              storage[i].empty() ? nullptr : storage[i].data(), storage[i].size()});
    }
  }
  // An empty destination with the same layout.
  OwnedModel EmptyLike() const {
    OwnedModel copy = *this;
    for (size_t i = 0; i < copy.storage.size(); ++i) {
      std::fill(copy.storage[i].begin(), copy.storage[i].end(), 0);
      copy.view.tensors[i].data = copy.storage[i].empty() ? nullptr : copy.storage[i].data();
    }
    return copy;
  }
  bool SameBytes(const OwnedModel& other) const { return storage == other.storage; }
};

// The in-process data plane over `t`, for a server or a client.
inline std::shared_ptr<transfer::DataPlane> Plane(std::shared_ptr<transfer::Transport> t) {
  return transfer::MakeInprocDataPlane(std::move(t));
}

inline ServerOptions SmallChunks() {
  ServerOptions o;
  o.listen = "tcp://127.0.0.1:0";
  o.chunk_bytes = 64 << 10;
  o.connect_timeout = 5s;
  o.stall_timeout = 5s;
  o.done_timeout = 5s;
  return o;
}

inline ClientOptions ClientFor(const std::string& endpoint) {
  ClientOptions o;
  o.sources = {endpoint};
  o.register_timeout = 5s;
  o.stall_timeout = 5s;
  o.connect_timeout = 5s;
  return o;
}

// A fixture whose models are drawn from a seed printed for reproduction, over one in-process
// data plane.
class InprocTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    std::printf("seed %llu\n", static_cast<unsigned long long>(seed_));
  }
  uint64_t seed_ = 0;
  std::shared_ptr<transfer::Transport> transport_ = transfer::MakeInprocTransport();
};

}  // namespace netloader
