// libFuzzer target: --model-loader-extra-config text (untrusted: it comes from the command line
// or a config file; netloader/loader_config.h), for instances of 1 to 8 ranks. It must return OK or
// a clear error, never crash.

#include <cstddef>
#include <cstdint>
#include <string>

#include "netloader/loader_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int world = 1 + data[0] % 8;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  netloader::Result<netloader::LoaderConfig> config = netloader::ParseLoaderConfig(text, world);
  if (config.ok()) {
    for (const auto& [rank, sources] : config->sources) {
      if (rank < 0 || rank >= world) __builtin_trap();
      for (const std::string& s : sources) {
        if (s.rfind("tcp://", 0) != 0) __builtin_trap();
      }
    }
  } else if (config.status().message().empty()) {
    __builtin_trap();
  }
  return 0;
}
