#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "netloader/export.h"

namespace netloader {

// Every element type the safetensors format defines (byte-sized and larger).
enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kI64,
  kU64,
  kF64,
};

// Bytes per element.
NETLOADER_EXPORT size_t DTypeSize(DType dtype);
// The safetensors spelling: "BF16", "F8_E4M3", "BOOL", ...
NETLOADER_EXPORT std::string_view DTypeName(DType dtype);
// Inverse of DTypeName; nullopt for a name safetensors does not define.
NETLOADER_EXPORT std::optional<DType> ParseDType(std::string_view name);

}  // namespace netloader
