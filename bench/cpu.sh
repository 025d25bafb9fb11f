#!/usr/bin/env bash
# CPU cost per job, two builds side by side: the node's and the client's CPU seconds (user +
# sys, from /proc and /usr/bin/time) for N `/bin/true` jobs through `submit`, alternating the
# two binaries ROUNDS times. CPU seconds barely move when the machine is busy, unlike jobs/s,
# so this is the figure to compare builds by on a noisy machine.
#
# usage: bench/cpu.sh OLD_DISPY_PEER NEW_DISPY_PEER     env: N (2000), ROUNDS (3)
# Runs itself in a loopback-only network namespace; stops its nodes by PID.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BIN NEW_BIN" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
if [ -z "${DISPY_CPU_IN_NETNS:-}" ]; then
  export DISPY_CPU_IN_NETNS=1
  exec unshare -n bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
N="${N:-2000}"; ROUNDS="${ROUNDS:-3}"
ARGS=(); for _ in $(seq "$N"); do ARGS+=(-a ""); done
W=$(mktemp -d /tmp/dispy-peer-cpu.XXXXXX)
NODE=""
cleanup() { [ -n "$NODE" ] && kill "$NODE" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
for round in $(seq "$ROUNDS"); do
  for which in old new; do
    bin=$1; [ "$which" = new ] && bin=$2
    rm -rf "$W/node"; : > "$W/out"
    "$bin" serve --listen /ip4/127.0.0.1/tcp/0 --no-mdns --cpus 2 --secret cpu --dest-path "$W/node" >"$W/out" 2>"$W/err" &
    NODE=$!
    for _ in $(seq 100); do grep -q '^listening ' "$W/out" && break; sleep 0.1; done
    addr=$(sed -n 's/^listening //p' "$W/out" | head -1)
    [ -n "$addr" ] || { echo "node did not start: $(cat "$W/err")" >&2; exit 1; }
    timeout 300 /usr/bin/time -f '%U %S' -o "$W/client" "$bin" submit /bin/true "${ARGS[@]}" \
      --peer "$addr" --secret cpu --no-mdns --json >/dev/null
    node_cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$NODE/stat")
    kill "$NODE"; wait "$NODE" 2>/dev/null || true; NODE=""
    echo "{\"build\":\"$which\",\"round\":$round,\"jobs\":$N,\"node_cpu_s\":$node_cpu,\"client_cpu_s\":$(awk '{print $1 + $2}' "$W/client")}"
  done
done
