#!/usr/bin/env bash
# Installs the built netloader into a temporary prefix, then builds and runs a tiny consumer
# against it twice: with find_package(netloader) and with pkg-config. Both must find the
# installed headers and library (not the build tree's, not /usr/local) and read the test-vector
# checkpoint to the digest PROTOCOL.md gives. Usage: check.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
work=$(mktemp -d /tmp/netloader-package-XXXXXX)
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
checkpoint="$here/../data/protocol-vectors.safetensors"
expected="10 tensors, table digest $(sed -n 's/.*"table_digest": "\([0-9a-f]*\)".*/\1/p' \
  "$here/../data/protocol-vectors.json")"

cmake -S "$here" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cmake" >/dev/null
got=$(LD_LIBRARY_PATH="$prefix/lib" "$work/cmake/consumer" "$checkpoint")
[ "$got" = "$expected" ] || { echo "find_package consumer printed '$got', not '$expected'"; exit 1; }
echo "find_package(netloader): $got"

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
flags=$(pkg-config --cflags --libs netloader)
case "$flags" in
  *"-I$prefix/lib/pkgconfig/../../include"*"-L$prefix/lib/pkgconfig/../../lib"*) ;;
  *) echo "pkg-config does not point into $prefix: $flags"; exit 1 ;;
esac
# shellcheck disable=SC2086
g++ -std=c++17 "$here/consumer.cpp" $flags -o "$work/consumer-pc"
got=$(LD_LIBRARY_PATH="$prefix/lib" "$work/consumer-pc" "$checkpoint")
[ "$got" = "$expected" ] || { echo "pkg-config consumer printed '$got', not '$expected'"; exit 1; }
echo "pkg-config netloader ($flags): $got"

# The Python package, where the build made it: importable from the prefix alone (its extension
# finds the installed libnetloader through its rpath), reading the same checkpoint's layout.
site=$(ls -d "$prefix"/lib/python3*/dist-packages 2>/dev/null | head -n 1 || true)
if [ -n "$site" ]; then
  got=$(cd "$work" && PYTHONPATH="$site" /usr/bin/python3 -c \
    "import netloader, sys; print(len(netloader.read_layout(sys.argv[1])), 'tensors')" "$checkpoint")
  [ "$got" = "10 tensors" ] || { echo "the installed Python package printed '$got'"; exit 1; }
  echo "python3 -c 'import netloader' from $site: $got"
fi
