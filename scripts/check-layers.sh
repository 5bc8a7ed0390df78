#!/usr/bin/env bash
# Fails on an include that breaks the layering (DESIGN.md, "Layers"): dependencies run one way,
#   public headers <- transfer/ <- the core (netloader/src/) <- server/, client/ <- examples/, python/
# and each third-party library stays in its own corner:
#   - public headers (netloader/include/) include only the standard library and each other;
#   - transfer/ never includes the core, client/ or server/, ZeroMQ or protobuf;
#   - the core never includes client/ or server/;
#   - the library code of client/ and server/ never include each other (a relay's feed is an
#     interface in the core); only the client CLI may use the server, for --serve;
#   - MPI (<mpi.h>) only in transfer/mpi/, and in the programs that are MPI programs themselves
#     (the example engine, the benchmark);
#   - ZeroMQ only in netloader/src/control/, client/, server/ and tests;
#   - protobuf's generated header only in netloader/src/protocol/;
#   - prometheus-cpp only in netloader/src/metrics/;
#   - examples/ and python/ use the public API (plus server/cli/cli_common.h, the CLIs' shared
#     flags), never the core, transfer/ or the library code of client/ and server/.
# Usage: scripts/check-layers.sh [ROOT]   (ROOT defaults to this checkout)
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"
failures=0

# Prints "file:line: include" for each #include in FILES matching the extended regex PATTERN.
includes() {
  local pattern=$1
  shift
  [ $# -eq 0 ] && return 0
  grep -HnE "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"]($pattern)" "$@" || true
}

# forbid RULE PATTERN FILES...: every include of PATTERN in FILES is a violation of RULE.
forbid() {
  local rule=$1 pattern=$2
  shift 2
  local found
  found=$(includes "$pattern" "$@")
  if [ -n "$found" ]; then
    echo "check-layers: $rule:" >&2
    echo "$found" | sed 's/^/  /' >&2
    failures=$((failures + 1))
  fi
}

# The tracked and new (not ignored) C++ files under the given folders.
sources() { git ls-files --cached --others --exclude-standard -- "${@/%//*.cpp}" "${@/%//*.h}"; }
mapfile -t public < <(sources netloader/include)
mapfile -t transfer < <(sources transfer)
mapfile -t transfer_mpi < <(sources transfer/mpi)
mapfile -t core < <(sources netloader/src)
mapfile -t control < <(sources netloader/src/control)
mapfile -t protocol < <(sources netloader/src/protocol)
mapfile -t client_lib < <(sources client | grep -v '^client/cli/')
mapfile -t server_lib < <(sources server | grep -v '^server/cli/')
mapfile -t outside < <(sources examples python)
mapfile -t all < <(sources netloader transfer client server examples python tests proto)

not_in() {  # the files of the first list (name) that are not in the second (name)
  local -n from=$1 skip=$2
  local f s
  for f in "${from[@]}"; do
    for s in "${skip[@]}"; do [ "$f" = "$s" ] && continue 2; done
    echo "$f"
  done
}

forbid "public headers include only the standard library and netloader/*.h" \
  'netloader/src/|transfer/|client/|server/|proto/|zmq|mpi\.h|google/|spdlog|fmt/|xxhash|nlohmann' \
  "${public[@]}"
forbid "transfer/ knows nothing of the core, client, server, ZeroMQ or protobuf" \
  'netloader/src/|client/|server/|proto/|zmq|google/' "${transfer[@]}"
forbid "the core never includes client/ or server/" 'client/|server/' "${core[@]}"
forbid "client/'s library code never includes server/" 'server/' "${client_lib[@]}"
forbid "server/'s library code never includes client/" 'client/' "${server_lib[@]}"
mapfile -t not_mpi < <(not_in all transfer_mpi | grep -vE '^(examples/engine/|tests/bench/)')
forbid "MPI only in transfer/mpi/ (and the MPI programs: examples/engine/, tests/bench/)" \
  'mpi\.h' "${not_mpi[@]}"
mapfile -t not_zmq < <(not_in all control | grep -vE '^(client/|server/|tests/)')
forbid "ZeroMQ only in netloader/src/control/, client/, server/ and tests" 'zmq' \
  "${not_zmq[@]}"
mapfile -t metrics_dir < <(sources netloader/src/metrics)
mapfile -t not_prometheus < <(not_in all metrics_dir)
forbid "prometheus-cpp only in netloader/src/metrics/" 'prometheus/' "${not_prometheus[@]}"
mapfile -t not_protobuf < <(not_in all protocol)
forbid "protobuf's generated code only in netloader/src/protocol/" \
  'proto/netloader\.pb\.h|google/protobuf' "${not_protobuf[@]}"
forbid "examples/ and python/ use the public API" \
  'netloader/src/|transfer/|client/|server/[a-z_]+\.h|proto/' "${outside[@]}"

if [ "$failures" -gt 0 ]; then
  echo "check-layers: $failures rule(s) broken (DESIGN.md, \"Layers\")" >&2
  exit 1
fi
echo "check-layers: ${#all[@]} files keep the layers"
