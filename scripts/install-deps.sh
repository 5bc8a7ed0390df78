#!/usr/bin/env bash
# Installs everything netloader needs to build, test and run, from Debian 12's archive.
# Idempotent; needs root (or sudo). Usage: scripts/install-deps.sh
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libzmq3-dev cppzmq-dev
  libopenmpi-dev openmpi-bin
  libprotobuf-dev protobuf-compiler
  libspdlog-dev libfmt-dev
  libxxhash-dev xxhash python3
  libgtest-dev libgmock-dev
  libcli11-dev nlohmann-json3-dev
  procps iproute2 clang-format
  etcd-server prometheus-cpp-dev prometheus
  clang libclang-rt-14-dev
  python3-dev python3-pybind11 python3-numpy python3-pytest python3-torch python3-mpi4py
  python3-prometheus-client
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
