#!/usr/bin/env bash
# Installs dependencies, builds, checks formatting and runs the whole test suite with ctest.
# Every test has a deadline (ctest TIMEOUT); tests that use MPI run one at a time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/check-format.sh"
"$root/scripts/build.sh"
cd "${BUILD_DIR:-$root/build}"
# mpirun refuses root without these; netloader itself never calls mpirun, but tests may.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# In CI, also fuzz every decoder of untrusted bytes for a bounded time (a crash fails the run).
# It runs first so that ctest's pass/fail summary is the last thing printed.
if [ "${CI:-}" = "true" ]; then
  "$root/scripts/fuzz.sh" "${FUZZ_SECONDS:-20}"
fi
ctest --output-on-failure -j 2 --timeout 300 "$@"
