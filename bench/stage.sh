#!/usr/bin/env bash
# Staging throughput (issue 14): one random dependency of MB MiB sent by `submit -f` to a
# fresh node of 2 CPUs on 127.0.0.1 (pnet + noise, hashed and verified on arrival), as
# MB/s of the whole submit, and the CPU seconds per GB each side spent (what a real 10 GbE
# LAN feels, where the two ends do not share 2 CPUs). With PERF=1 the node and the client
# are profiled (`perf record -g`), the top symbols of each printed to stderr and the
# profiles kept as node.perf and client.perf in PERF_OUT (/tmp).
#
# Prints JSON lines {"bench","metric","value","unit","rep","date"} (the format of
# ../shared/bench/). Runs itself in a loopback-only network namespace and stops its node by
# PID.
#
# usage: bench/stage.sh      env: REPS (3), MB (200), PERF (0), BIN (this tree's release build;
#                                 another binary, e.g. an older commit's, for a before/after pass)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REPS="${REPS:-3}"; MB="${MB:-200}"; PERF="${PERF:-0}"
source "$ROOT/bench/common.sh"
if [ -z "${DISPY_STAGE_IN_NETNS:-}" ] && [ -z "${BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin dispy-peer)
fi
in_loopback_netns DISPY_STAGE_IN_NETNS "$@"
BIN="${BIN:-$ROOT/target/release/dispy-peer}"
workdir stage
TCK=$(getconf CLK_TCK)
# utime + stime of a live process, in seconds.
cpu_of() { awk -v t="$TCK" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }
calc() { python3 -c "print(round($1, 2))"; }
top_symbols() {
  perf report -i "$1" --no-children --sort symbol --stdio 2>&1 | grep -E "^ +[0-9]" | head -15 >&2 || true
}

head -c $((MB << 20)) /dev/urandom > "$W/dep.bin"
for rep in $(seq "$REPS"); do
  : > "$W/out"
  NODE_CMD=("$BIN" serve --listen /ip4/127.0.0.1/tcp/0 --no-mdns --cpus 2 --secret stage --dest-path "$W/node$rep")
  if [ "$PERF" = 1 ]; then
    perf record -q --call-graph dwarf,16384 -o "$W/node.perf" -- "${NODE_CMD[@]}" >"$W/out" 2>"$W/err" &
  else
    "${NODE_CMD[@]}" >"$W/out" 2>"$W/err" &
  fi
  NODE=$!
  for _ in $(seq 100); do grep -q '^listening ' "$W/out" && break; sleep 0.1; done
  ADDR=$(sed -n 's/^listening //p' "$W/out" | head -1)
  [ -n "$ADDR" ] || { echo "node did not start: $(cat "$W/err")" >&2; exit 1; }
  # Under perf, the node is perf's child.
  NPID=$NODE; [ "$PERF" = 1 ] && NPID=$(pgrep -P "$NODE" | head -1)
  before=$(cpu_of "$NPID")
  # A fresh hash cache each time: the client hashes the file as a first-time user's would.
  export XDG_CACHE_HOME="$W/cache$rep"
  CLIENT=(/usr/bin/time -f '%U %S' -o "$W/client.cpu" "$BIN" submit /bin/true -f "$W/dep.bin" --peer "$ADDR"
    --secret stage --no-mdns --json)
  t0=$(date +%s.%N)
  if [ "$PERF" = 1 ]; then
    perf record -q --call-graph dwarf,16384 -o "$W/client.perf" -- "${CLIENT[@]}" > "$W/stage.json"
  else
    "${CLIENT[@]}" > "$W/stage.json"
  fi
  t1=$(date +%s.%N)
  after=$(cpu_of "$NPID")
  kill "$NODE"; wait "$NODE" || true; NODE=""
  gb=$(python3 -c "print($MB * 1.048576 / 1000)")
  emit dispy-peer stage_mb_per_s "$(calc "$MB * 1.048576 / ($t1 - $t0)")" MB/s "$rep"
  emit dispy-peer stage_node_cpu_s_per_gb "$(calc "($after - $before) / $gb")" s/GB "$rep"
  read -r u s < "$W/client.cpu"
  emit dispy-peer stage_client_cpu_s_per_gb "$(calc "($u + $s) / $gb")" s/GB "$rep"
  if [ "$PERF" = 1 ]; then
    echo "--- node, top symbols" >&2; top_symbols "$W/node.perf"
    echo "--- client, top symbols" >&2; top_symbols "$W/client.perf"
    cp "$W/node.perf" "$W/client.perf" "${PERF_OUT:-/tmp}/"
  fi
  rm -rf "$W/node$rep" "$W/cache$rep"
done
