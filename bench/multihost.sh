#!/usr/bin/env bash
# Cross-host comparison on one machine: two network namespaces joined by a veth
# pair (optionally rate-limited), PER_HOST ranks in each (default 1; with 2 or
# more agentcomm all-reduces hierarchically), running the shared benchmark
# (python -m agentcomm.bench under the torchrun-style environment).
# Needs root and iproute2. Usage:
#   [PER_HOST=2] bench/multihost.sh [RATE] [bench args...]   e.g. bench/multihost.sh 10gbit -b 4K -e 64M -f 16384
# RATE "none" (default) leaves the veth unshaped. SCRIPT=path runs that script (with the
# same environment and arguments) instead of python -m agentcomm.bench, e.g.
#   SCRIPT=bench/compression_ddp.py bench/multihost.sh 1gbit --steps 6
set -euo pipefail
RATE=${1:-none}; shift || true
PY=${PYTHON:-python}
tag=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
ns=(acb${tag}a acb${tag}b); dev=(acw${tag}a acw${tag}b); addr=(10.231.78.1 10.231.78.2)
cleanup() { for n in "${ns[@]}"; do ip netns del "$n" 2>/dev/null || true; done; }
trap cleanup EXIT
for n in "${ns[@]}"; do ip netns add "$n"; done
ip link add "${dev[0]}" type veth peer name "${dev[1]}"
for i in 0 1; do
  ip link set "${dev[$i]}" netns "${ns[$i]}"
  ip -n "${ns[$i]}" addr add "${addr[$i]}/24" dev "${dev[$i]}"
  ip -n "${ns[$i]}" link set "${dev[$i]}" up
  ip -n "${ns[$i]}" link set lo up
  if [ "$RATE" != none ]; then
    ip netns exec "${ns[$i]}" tc qdisc add dev "${dev[$i]}" root tbf rate "$RATE" burst 1mbit latency 50ms
  fi
done
PER_HOST=${PER_HOST:-1}
WORLD=$((2 * PER_HOST))
pids=()
for r in $(seq 0 $((WORLD - 1))); do
  h=$((r / PER_HOST))
  # Gloo resolves the hostname (127.0.0.1 inside a namespace): name its interface.
  ip netns exec "${ns[$h]}" env RANK=$r WORLD_SIZE=$WORLD LOCAL_RANK=$((r % PER_HOST)) MASTER_ADDR=${addr[0]} \
    MASTER_PORT=29677 GLOO_SOCKET_IFNAME=${dev[$h]} \
    "$PY" ${SCRIPT:--m agentcomm.bench --no-progress} "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
