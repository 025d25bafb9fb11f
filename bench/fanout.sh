#!/usr/bin/env bash
# Staging a large dependency behind a slow client link (issue 15): 8 `serve --cpus 1` nodes,
# each in its own network namespace on one bridge (mDNS on, 10.87.0.0/24), a client in a
# namespace of its own whose uplink is shaped by `tc` (tbf, RATE). For N in NODES and with
# and without fan-out (`submit --no-fanout`), a fresh random file of MIB MiB is staged to N
# nodes (`--nodes fan1 ... fanN`, one job each that hashes its copy, then waits, so that the
# cluster stays until every node holds the file; submit is stopped then); per run:
#   stage_s_<N>_<mode>    seconds from submit's start until all N nodes hold the file
#   sent_x_<N>_<mode>     bytes the client's link sent, in files' worth
# Prints JSON lines {"bench","metric","value","unit","rep","date"} (../shared/bench/'s format).
#
# usage: bench/fanout.sh     env: NODES ("1 2 4 8"), MIB (200), RATE (200mbit), REPS (1),
#                                 PROFILE (release)
# Needs root (ip netns, tc). Everything it starts runs inside the namespaces it makes; mDNS
# never runs in the machine's own. It stops what it started by PID and deletes its
# namespaces on exit, also on failure or Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NODES="${NODES:-1 2 4 8}"; MIB="${MIB:-200}"; RATE="${RATE:-200mbit}"; REPS="${REPS:-1}"
PROFILE="${PROFILE:-release}"
[ "$(id -u)" = 0 ] || { echo "bench/fanout.sh makes network namespaces: run it as root" >&2; exit 2; }
flag=(); [ "$PROFILE" = release ] && flag=(--release)
(cd "$ROOT" && cargo build "${flag[@]}" --quiet --bin dispy-peer)
BIN="$ROOT/target/$PROFILE/dispy-peer"
MAX=8
P="dpo$$"
W=$(mktemp -d /tmp/dispy-peer-fanout.XXXXXX)
PIDS=(); SPACES=()
source "$ROOT/bench/common.sh"

trap lan_cleanup EXIT
trap 'exit 130' INT TERM

addr() { echo "10.87.0.$(($1 + 1))"; }
mac() { printf '02:87:00:00:00:%02x' "$(($1 + 1))"; }
make_lan "$MAX" 24
ip netns exec "$P-0" tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 400ms

for i in $(seq "$MAX"); do
  ip netns exec "$P-$i" "$BIN" serve --cpus 1 --name "fan$i" --secret bench --listen /ip4/0.0.0.0/tcp/9700 \
    --drain-timeout 1 --dest-path "$W/node$i" >"$W/node$i.out" 2>"$W/node$i.err" &
  PIDS+=($!)
done
for i in $(seq "$MAX"); do
  for _ in $(seq 300); do grep -q '^listening ' "$W/node$i.out" && break; sleep 0.1; done
  grep -q '^listening ' "$W/node$i.out" || { echo "node $i did not start: $(cat "$W/node$i.err")" >&2; exit 1; }
done
printf '#!/bin/sh\nsha256sum ./data.bin | cut -c1-64\nexec sleep 600\n' >"$W/job.sh"; chmod +x "$W/job.sh"
tx() { ip netns exec "$P-0" cat /sys/class/net/eth0/statistics/tx_bytes; }

for rep in $(seq "$REPS"); do
  for n in $NODES; do
    for mode in fanout direct; do
      head -c "$((MIB << 20))" /dev/urandom >"$W/data.bin"
      hash=$(sha256sum "$W/data.bin" | cut -c1-64)
      args=(); for i in $(seq "$n"); do args+=(--nodes "fan$i" -a "$i"); done
      [ "$mode" = direct ] && args+=(--no-fanout)
      before=$(tx); start=$(date +%s.%N)
      ip netns exec "$P-0" "$BIN" submit "$W/job.sh" -f "$W/data.bin" --secret bench --json "${args[@]}" \
        >"$W/submit.out" 2>"$W/submit.err" &
      submit=$!; PIDS+=("$submit")
      held=""
      for _ in $(seq 6000); do  # 20 ms steps, 120 s at most
        all=1
        for i in $(seq "$n"); do [ -f "$W/node$i/store/$hash" ] || { all=0; break; }; done
        if [ "$all" = 1 ]; then held=$(date +%s.%N); break; fi
        sleep 0.02
      done
      kill "$submit" 2>/dev/null || true; wait "$submit" 2>/dev/null || true
      [ -n "$held" ] || { echo "not every node received the file within 120 s: $(tail -5 "$W/submit.err")" >&2; exit 1; }
      emit dispy-peer "stage_s_${n}_$mode" "$(python3 -c "print(round($held - $start, 2))")" s "$rep"
      emit dispy-peer "sent_x_${n}_$mode" "$(python3 -c "print(round(($(tx) - $before) / ($MIB << 20), 2))")" x "$rep"
    done
  done
done
