// libFuzzer target: safetensors header parsing must reject any input with a Status, never crash.
// Input: 8 bytes (little-endian count of data bytes said to follow the header), then the header.

#include <cstdint>
#include <string>

#include "netloader/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t data_bytes = 0;
  for (int i = 0; i < 8; ++i) data_bytes |= uint64_t{data[i]} << (8 * i);
  const std::string header(reinterpret_cast<const char*>(data) + 8, size - 8);
  netloader::Result<netloader::ShardLayout> layout =
      netloader::ParseSafetensorsHeader(header, data_bytes % (1ull << 40), "fuzz");
  if (layout.ok()) {
    for (const netloader::TensorSpec& t : layout->tensors) {
      if (t.file_offset < 8 + header.size()) __builtin_trap();  // offsets point past the header
    }
  }
  return 0;
}
