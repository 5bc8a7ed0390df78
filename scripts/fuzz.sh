#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) in build-fuzz/ and runs each for SECONDS
# (default 30) starting from its corpus in tests/fuzz/corpus/. New inputs go to a scratch
# directory; to grow the kept corpus, merge them in by hand (build-fuzz/bin/fuzz_X -merge=1 CORPUS SCRATCH).
# A crash fails the script and leaves the reproducer (crash-*) in build-fuzz/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
build=$root/build-fuzz
# Keep in step with scripts/sanitize.sh asan, which builds its tests in this same build.
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only -DNDEBUG" \
  "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only -DNDEBUG" \
  -DNETLOADER_BUILD_FUZZERS=ON -DNETLOADER_BUILD_TESTS=ON -DNETLOADER_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target fuzz_safetensors_header fuzz_wire_decode fuzz_loader_config
for target in safetensors_header wire_decode loader_config; do
  scratch=$(mktemp -d)
  echo "fuzz_$target: ${seconds}s"
  (cd "$build" && "$build/bin/fuzz_$target" -max_total_time="$seconds" -max_len=65536 \
     -print_final_stats=1 "$scratch" "$root/tests/fuzz/corpus/$target" 2>&1 | tail -4)
  rm -rf "$scratch"
done
