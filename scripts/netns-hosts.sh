#!/usr/bin/env bash
# Simulated hosts on one machine: network namespaces on a bridge, each with one NIC ("nlv")
# whose rate is capped in both directions by tc tbf, so that "hosts" have real link limits.
# Needs root (or CAP_NET_ADMIN). Used by the tests labelled netns (tests/support: Hosts) and by
# hand:
#
#   scripts/netns-hosts.sh up NAME RATE [RATE ...]   host i (0, 1, ...) gets a NIC of RATE i
#                                                    (tc units: 500mbit, 1gbit, ...)
#   scripts/netns-hosts.sh exec NAME I CMD [ARG...]  runs CMD on host I
#   scripts/netns-hosts.sh down NAME                 removes every namespace, link and qdisc
#   scripts/netns-hosts.sh addr NAME I               prints host I's address ("bridge": the
#                                                    root namespace's, where a rendezvous runs)
#   scripts/netns-hosts.sh sweep                     removes the sets of test processes that
#                                                    died without cleaning up (NAME nlt<pid>)
#
# NAME is at most 10 characters ([a-z0-9]). Host i is namespace NAME-h<i> at 10.<X>.<Y>.<i+1>/24,
# the bridge nlbr-NAME at .254 of the same subnet (X.Y derived from NAME). `up` removes a
# half-built set on failure; `down` is safe to repeat.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # ip and tc

die() { echo "netns-hosts: $*" >&2; exit 1; }

subnet() {  # 10.X.Y from the name, so that two names do not share a subnet
  local sum
  sum=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
  echo "10.$((100 + sum % 100)).$((sum / 100 % 250))"
}

check_name() {
  [[ "$1" =~ ^[a-z0-9]{1,10}$ ]] || die "NAME must be 1-10 characters of [a-z0-9], got '$1'"
}

down() {
  local name=$1 ns
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${name}-h[0-9]+$" || true); do
    ip netns del "$ns" 2>/dev/null || true  # takes its end of the veth pair with it
  done
  for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 |
                grep -E "^(nlbr-${name}|nl-${name}-[0-9]+)$" || true); do
    ip link del "$link" 2>/dev/null || true  # the bridge, and any root-side veth left over
  done
}

# The larger of 256 KiB and what the rate sends in 4 ms: tbf needs a burst of at least the
# largest packet (64 KiB with segmentation offload) and what the rate moves per timer tick.
burst_for() {
  local rate=$1 bits
  bits=$(echo "$rate" | awk '{
    v = $1 + 0; u = tolower($1); sub(/^[0-9.]+/, "", u)
    if (u == "kbit") v *= 1e3; else if (u == "mbit") v *= 1e6; else if (u == "gbit") v *= 1e9
    else if (u != "bit" && u != "") { print "bad"; exit }
    printf "%d", v }')
  [[ "$bits" != bad && "$bits" -gt 0 ]] || die "bad rate '$rate' (use e.g. 500mbit or 1gbit)"
  local bytes=$((bits / 8 / 250))
  echo $((bytes > 262144 ? bytes : 262144))
}

up() {
  local name=$1
  shift
  [[ $# -ge 1 && $# -le 10 ]] || die "up needs one RATE per host, 1 to 10 hosts"
  local net bridge="nlbr-${name}" i=0
  net=$(subnet "$name")
  down "$name"
  trap 'down "$name"' ERR
  ip link add "$bridge" type bridge
  ip addr add "${net}.254/24" dev "$bridge"
  ip link set "$bridge" up
  for rate in "$@"; do
    local ns="${name}-h${i}" outer="nl-${name}-${i}" burst
    burst=$(burst_for "$rate")
    ip netns add "$ns"
    ip link add "$outer" type veth peer name nlv netns "$ns"
    ip link set "$outer" master "$bridge" up
    ip -n "$ns" addr add "${net}.$((i + 1))/24" dev nlv
    ip -n "$ns" link set nlv up
    ip -n "$ns" link set lo up
    # Both directions: what the host sends (its end) and what it receives (the bridge's end).
    ip netns exec "$ns" tc qdisc add dev nlv root tbf rate "$rate" burst "$burst" latency 100ms
    tc qdisc add dev "$outer" root tbf rate "$rate" burst "$burst" latency 100ms
    i=$((i + 1))
  done
  trap - ERR
}

sweep() {
  local name pid
  for name in $( (ip netns list | awk '{print $1}'; ip -o link show | awk -F': ' '{print $2}') |
                 sed -nE 's/^(nlt[0-9]+)-h[0-9]+$/\1/p; s/^nlbr-(nlt[0-9]+)$/\1/p' | sort -u); do
    pid=${name#nlt}
    if ! kill -0 "$pid" 2>/dev/null; then down "$name"; fi
  done
}

if [[ ${1:-} == sweep ]]; then sweep; exit 0; fi
[[ $# -ge 2 ]] || die "usage: $0 up NAME RATE... | exec NAME I CMD... | addr NAME I | down NAME | sweep"
command=$1
name=$2
check_name "$name"
shift 2
case "$command" in
  up) up "$name" "$@" ;;
  down) down "$name" ;;
  addr)
    [[ $# -eq 1 ]] || die "addr needs a host index or 'bridge'"
    # "bridge" (or -1): the root namespace's end.
    if [[ $1 == bridge || $1 == -1 ]]; then echo "$(subnet "$name").254"; else echo "$(subnet "$name").$(($1 + 1))"; fi
    ;;
  exec)
    [[ $# -ge 2 ]] || die "exec needs a host index and a command"
    host=$1
    shift
    exec ip netns exec "${name}-h${host}" "$@"
    ;;
  *) die "unknown command '$command'" ;;
esac
