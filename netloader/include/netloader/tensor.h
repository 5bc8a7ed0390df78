#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "netloader/dtype.h"
#include "netloader/export.h"
#include "netloader/status.h"

namespace netloader {

// One tensor in memory the host owns. netloader never frees or reallocates `data`.
struct TensorView {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;  // empty = scalar (one element)
  void* data = nullptr;        // may be null only when size_bytes == 0
  uint64_t size_bytes = 0;     // must equal product(shape) * DTypeSize(dtype)
};

// An ordered list of tensors. The order is the storage order: the order in which tensors are
// streamed and in which both sides must list them.
struct ModelView {
  std::vector<TensorView> tensors;

  uint64_t total_bytes() const {
    uint64_t total = 0;
    for (const TensorView& t : tensors) total += t.size_bytes;
    return total;
  }
};

// How one rank's weights are cut out of the whole model. Both sides of a transfer must agree.
struct Partition {
  int tp_size = 1;  // tensor-parallel world size
  int tp_rank = 0;  // this rank's index in [0, tp_size)
  int pp_size = 1;  // pipeline-parallel world size
  int pp_rank = 0;  // this stage's index in [0, pp_size)
  // Any further layout the host declares (for example an expert placement); compared verbatim.
  std::string layout_key;
};

// Element count of `shape`, or an error on overflow / a negative dimension.
NETLOADER_EXPORT Result<uint64_t> ElementCount(const std::vector<int64_t>& shape);

// Checks that names are unique and non-empty, sizes match shape x dtype, and data is set.
NETLOADER_EXPORT Status ValidateModelView(const ModelView& model);

// Checks sizes and ranks; names the first field out of range.
NETLOADER_EXPORT Status ValidatePartition(const Partition& partition);

// Tensor selection, for partial loads (ClientOptions::tensors; PROTOCOL.md, section 4.2.1). A
// pattern matches a whole tensor name: '*' matches any run of characters ('.' included), '?'
// any one character, a backslash makes the character after it literal; every other character
// matches itself. A pattern without wildcards is an exact name. A character is one UTF-8
// encoded code point (1 to 4 bytes: "?" matches "é" and "层", "??" matches neither); in a name or
// pattern that is not valid UTF-8, each byte that starts no well-formed sequence is a character
// of its own.
NETLOADER_EXPORT bool TensorPatternMatches(std::string_view pattern, std::string_view name);
// Errors: InvalidArgument for an empty pattern, one longer than 1,024 bytes, or one ending in a
// lone backslash.
NETLOADER_EXPORT Status ValidateTensorPattern(std::string_view pattern);
// The pattern that matches exactly `name` (its wildcards and backslashes escaped).
NETLOADER_EXPORT std::string ExactTensorPattern(std::string_view name);
// The tensors of `model` matching any of `patterns`, in name order (bytewise): the stream order
// of a partial load, the same on both sides whatever each side's storage order. Errors:
// InvalidArgument naming a pattern that is malformed or matches no tensor of `model`.
NETLOADER_EXPORT Result<ModelView> SelectTensors(const ModelView& model,
                                                 const std::vector<std::string>& patterns);

}  // namespace netloader
