// netloader-make-checkpoint: writes a seeded sample safetensors checkpoint for demos and tests.

#include <CLI/CLI.hpp>
#include <cstdio>

#include "examples/checkpoint_gen.h"

int main(int argc, char** argv) {
  CLI::App app{
      "netloader-make-checkpoint: write a sample safetensors checkpoint with seeded contents\n"
      "(every safetensors dtype, a zero-byte tensor, a scalar, tensors from bytes to many MiB)."};
  std::string dir;
  netloader::examples::CheckpointSpec spec;
  double mib = static_cast<double>(spec.total_bytes >> 20);
  app.add_option("--output", dir, "Directory to write into (created if missing)")->required();
  app.add_option("--size-mib", mib, "Approximate data size in MiB")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--tensors", spec.tensors, "Number of tensors")
      ->check(CLI::Range(4, 1000000))
      ->capture_default_str();
  app.add_option("--shards", spec.shards, "Number of files (> 1 adds an index.json)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--seed", spec.seed, "Seed of the contents")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spec.total_bytes = static_cast<uint64_t>(mib * (1 << 20));
  netloader::Status status = netloader::examples::GenerateCheckpoint(dir, spec);
  if (!status.ok()) {
    std::fprintf(stderr, "netloader-make-checkpoint: %s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("wrote %d tensors (~%.0f MiB, %d file(s), seed %llu) to %s\n", spec.tensors, mib,
              spec.shards, static_cast<unsigned long long>(spec.seed), dir.c_str());
  return 0;
}
