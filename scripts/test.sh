#!/usr/bin/env bash
# Installs dependencies, checks formatting and the layers, builds, and runs the whole test suite
# with ctest.
# Every test has a deadline (ctest TIMEOUT); tests that use MPI run one at a time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Each step says how long it took, so a slow CI run shows where its time went.
step() {
  local start=$SECONDS
  "$@"
  echo "test.sh: ${1##*/} ${*:2} took $((SECONDS - start)) s" >&2
}
step "$root/scripts/install-deps.sh"
step "$root/scripts/check-format.sh"
step "$root/scripts/check-layers.sh"
step "$root/scripts/build.sh"
cd "${BUILD_DIR:-$root/build}"
# mpirun refuses root without these; netloader itself never calls mpirun, but tests may.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# In CI (or with SANITIZE=1), also fuzz every decoder of untrusted bytes for a bounded time, and
# run the unit and in-process tests under ASan+UBSan and under TSan; any crash or report fails
# the run. They run first so that the full suite's pass/fail summary is the last thing printed.
if [ "${CI:-}" = "true" ] || [ "${SANITIZE:-}" = "1" ]; then
  step "$root/scripts/fuzz.sh" "${FUZZ_SECONDS:-20}"
  step "$root/scripts/sanitize.sh" asan
  step "$root/scripts/sanitize.sh" tsan
fi
echo "test.sh: $SECONDS s before the full suite" >&2
ctest --output-on-failure -j 2 --timeout 300 "$@"
