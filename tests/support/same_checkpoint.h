#pragma once

// A gtest check shared by the tests of real checkpoints: two checkpoints hold the same tensors.

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "netloader/safetensors.h"

namespace netloader::testing {

// Tensor-by-tensor comparison through the reader: names, dtypes, shapes, bytes, metadata.
// With `patterns`: `actual` holds exactly the tensors of `expected` they select (a partial load's
// output), in the same shards and order.
inline void ExpectSameCheckpoint(const std::string& expected, const std::string& actual,
                                 const std::vector<std::string>& patterns = {}) {
  auto a = ReadCheckpointLayout(expected);
  if (a.ok() && !patterns.empty()) a = SelectFromLayout(*a, patterns);
  auto b = ReadCheckpointLayout(actual);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status().ToString() << " / " << b.status().ToString();
  ASSERT_EQ(a->shards.size(), b->shards.size());
  for (size_t s = 0; s < a->shards.size(); ++s) {
    EXPECT_EQ(a->shards[s].metadata, b->shards[s].metadata);
  }
  auto ma = HostModel::Load(*a);
  auto mb = HostModel::Load(*b);
  ASSERT_TRUE(ma.ok() && mb.ok());
  ASSERT_EQ(ma->view().tensors.size(), mb->view().tensors.size());
  for (size_t i = 0; i < ma->view().tensors.size(); ++i) {
    const TensorView& x = ma->view().tensors[i];
    const TensorView& y = mb->view().tensors[i];
    ASSERT_EQ(x.name, y.name);
    ASSERT_EQ(x.dtype, y.dtype) << x.name;
    ASSERT_EQ(x.shape, y.shape) << x.name;
    ASSERT_EQ(x.size_bytes, y.size_bytes) << x.name;
    if (x.size_bytes) {
      ASSERT_EQ(std::memcmp(x.data, y.data, x.size_bytes), 0) << x.name;
    }
  }
}

}  // namespace netloader::testing
