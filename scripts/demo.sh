#!/usr/bin/env bash
# The main job end to end: installs dependencies, builds, generates a sample checkpoint, starts
# netloader-server on it, pulls it with netloader-client as a separate process, checks the copy
# is byte-identical, and prints what happened.
#   SIZE_MIB (default 512)  size of the generated checkpoint
#   TENSORS  (default 1000) number of tensors
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
bin=${BUILD_DIR:-$root/build}/bin
work=$(mktemp -d /tmp/netloader-demo-XXXXXX)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo "== 1. generate a sample checkpoint"
"$bin/netloader-make-checkpoint" --output "$work/model" --size-mib "${SIZE_MIB:-512}" \
  --tensors "${TENSORS:-1000}" --seed 42

echo "== 2. start netloader-server (it starts its own MPI rendezvous, a private ompi-server;"
echo "      clients must hold its shared secret, ${NETLOADER_SECRET_FILE:-$HOME/.config/netloader/secret},"
echo "      created on first use)"
"$bin/netloader-server" --model "$work/model" --listen tcp://127.0.0.1:0 \
  --endpoint-file "$work/endpoint" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 300); do [ -s "$work/endpoint" ] && break; sleep 0.1; done
if [ ! -s "$work/endpoint" ]; then cat "$work/server.log"; echo "server did not start"; exit 1; fi
endpoint=$(cat "$work/endpoint")
echo "server listening at $endpoint"

echo "== 3. pull it with netloader-client (a separate process), verify and write it out"
"$bin/netloader-client" --source "$endpoint" --model "$work/model" --output "$work/copy"

echo "== 4. compare"
cmp "$work/model/model.safetensors" "$work/copy/model.safetensors"
echo "copy is byte-identical to the original ($(stat -c %s "$work/copy/model.safetensors") bytes)"

echo "== 5. stop the server (SIGTERM: graceful)"
kill -TERM "$server_pid"; wait "$server_pid"; server_pid=""
cat "$work/server.log"
