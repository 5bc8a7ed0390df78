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
# In CI (or with SANITIZE=1), also fuzz every decoder of untrusted bytes for a bounded time, and
# run the unit and in-process tests under ASan+UBSan and under TSan; any crash or report fails
# the run. They run first so that the full suite's pass/fail summary is the last thing printed.
if [ "${CI:-}" = "true" ] || [ "${SANITIZE:-}" = "1" ]; then
  "$root/scripts/fuzz.sh" "${FUZZ_SECONDS:-20}"
  "$root/scripts/sanitize.sh" asan
  "$root/scripts/sanitize.sh" tsan
fi
ctest --output-on-failure -j 2 --timeout 300 "$@"
