#!/usr/bin/env bash
# Configures and builds netloader into build/ (or $BUILD_DIR). Extra arguments go to CMake.
# In CI (CI=true) warnings are errors.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNETLOADER_WERROR=$werror "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
