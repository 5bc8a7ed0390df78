#include "netloader/tensor.h"

#include <unordered_set>

namespace netloader {

Result<uint64_t> ElementCount(const std::vector<int64_t>& shape) {
  uint64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0) {
      return Status(StatusCode::kInvalidArgument, "negative dimension " + std::to_string(dim));
    }
    if (dim != 0 && count > UINT64_MAX / static_cast<uint64_t>(dim)) {
      return Status(StatusCode::kInvalidArgument, "shape overflows 64 bits");
    }
    count *= static_cast<uint64_t>(dim);
  }
  return count;
}

Status ValidateModelView(const ModelView& model) {
  std::unordered_set<std::string> names;
  for (size_t i = 0; i < model.tensors.size(); ++i) {
    const TensorView& t = model.tensors[i];
    const std::string label = "tensor " + std::to_string(i) + " '" + t.name + "'";
    if (t.name.empty()) return Status(StatusCode::kInvalidArgument, label + ": empty name");
    if (!names.insert(t.name).second) {
      return Status(StatusCode::kInvalidArgument, label + ": duplicate name");
    }
    Result<uint64_t> count = ElementCount(t.shape);
    if (!count.ok()) return count.status().WithContext(label);
    const uint64_t size = *count * DTypeSize(t.dtype);
    if (*count != 0 && size / *count != DTypeSize(t.dtype)) {
      return Status(StatusCode::kInvalidArgument, label + ": size overflows 64 bits");
    }
    if (size != t.size_bytes) {
      return Status(StatusCode::kInvalidArgument,
                    label + ": size_bytes " + std::to_string(t.size_bytes) +
                        " does not match shape x dtype = " + std::to_string(size));
    }
    if (t.size_bytes > 0 && t.data == nullptr) {
      return Status(StatusCode::kInvalidArgument, label + ": data is null");
    }
  }
  return Status::Ok();
}

Status ValidatePartition(const Partition& p) {
  if (p.tp_size < 1) return Status(StatusCode::kInvalidArgument, "tp_size must be >= 1");
  if (p.pp_size < 1) return Status(StatusCode::kInvalidArgument, "pp_size must be >= 1");
  if (p.tp_rank < 0 || p.tp_rank >= p.tp_size) {
    return Status(StatusCode::kInvalidArgument, "tp_rank " + std::to_string(p.tp_rank) +
                                                    " is outside [0, " + std::to_string(p.tp_size) +
                                                    ")");
  }
  if (p.pp_rank < 0 || p.pp_rank >= p.pp_size) {
    return Status(StatusCode::kInvalidArgument, "pp_rank " + std::to_string(p.pp_rank) +
                                                    " is outside [0, " + std::to_string(p.pp_size) +
                                                    ")");
  }
  return Status::Ok();
}

}  // namespace netloader
