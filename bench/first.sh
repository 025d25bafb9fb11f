#!/usr/bin/env bash
# A LAN's first result (issue 14): N (3) `serve --cpus 2` nodes, each in its own network
# namespace on one bridge (mDNS on, 10.85.0.0/24), and a client in a namespace of its own
# (examples/first_result.rs), timed from the client's process start to its first job's
# result. Per repetition, on fresh nodes (empty stores):
#   fn_fresh_ms    a function cluster: the client's executable is staged to the nodes first
#   fn_cached_ms   the same again: the nodes have the executable already
#   prog_ms        a program cluster (`/bin/true`)
# and fn_exe_mb, the size of the executable that travels. Prints JSON lines
# {"bench","metric","value","unit","rep","date"} (the format of ../shared/bench/).
#
# usage: bench/first.sh      env: REPS (3), N (3), PROFILE (release); BIN and PROBE: other
#                             builds of dispy-peer and of the probe (a before/after pass);
#                             PROBE_LOG and NODE_LOG (log filters, e.g. dispy=debug) with
#                             KEEP_LOGS=DIR: the probes' and nodes' logs kept in DIR;
#                             KEYFILE=1: nodes and client share a key file (`dispy-peer
#                             keygen`) instead of a passphrase (no key derivation at start)
# Needs root (ip netns). Everything it starts runs inside the namespaces it makes; mDNS never
# runs in the machine's own. It stops what it started by PID and deletes its namespaces on
# exit, also on failure or Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REPS="${REPS:-3}"; N="${N:-3}"; PROFILE="${PROFILE:-release}"
[ "$(id -u)" = 0 ] || { echo "bench/first.sh makes network namespaces: run it as root" >&2; exit 2; }
flag=(); [ "$PROFILE" = release ] && flag=(--release)
if [ -z "${PROBE:-}" ]; then
  (cd "$ROOT" && cargo build "${flag[@]}" --quiet --bin dispy-peer --example first_result)
fi
BIN="${BIN:-$ROOT/target/$PROFILE/dispy-peer}"; PROBE="${PROBE:-$ROOT/target/$PROFILE/examples/first_result}"
export PROBE_SECRET=bench PROBE_TIMEOUT=30
P="dpf$$"
W=$(mktemp -d /tmp/dispy-peer-first.XXXXXX)
PIDS=(); SPACES=()
source "$ROOT/bench/common.sh"
SECRET=(--secret "$PROBE_SECRET")
if [ "${KEYFILE:-0}" = 1 ]; then
  "$BIN" keygen "$W/key" >/dev/null
  export PROBE_SECRET_FILE="$W/key"; SECRET=(--secret-file "$W/key")
fi

trap lan_cleanup EXIT
trap 'exit 130' INT TERM

addr() { echo "10.85.0.$(($1 + 1))"; }
mac() { printf '02:85:00:00:00:%02x' "$(($1 + 1))"; }
# The LAN: a bridge namespace, the client's (0) and N nodes' (1..N).
make_lan "$N" 24

probe() { # probe KIND TAG -> milliseconds to the first result
  local out
  out=$(ip netns exec "$P-0" "$PROBE" "$1" 2>"$W/probe.err") || { echo "first_result $1 failed: $(cat "$W/probe.err")" >&2; exit 1; }
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$W/probe.err" "$KEEP_LOGS/$1-$2.log"; fi
  python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["first_result_s"] * 1000, 1))' "$out"
}

for rep in $(seq "$REPS"); do
  for i in $(seq "$N"); do
    mkdir -p "$W/$rep/$i"
    RUST_LOG="${NODE_LOG:-info}" ip netns exec "$P-$i" "$BIN" serve --cpus 2 --name "f$i" "${SECRET[@]}" \
      --listen /ip4/0.0.0.0/tcp/9700 --drain-timeout 1 --dest-path "$W/$rep/$i/dest" >"$W/$rep/$i/out" 2>"$W/$rep/$i/err" &
    PIDS+=($!)
  done
  for i in $(seq "$N"); do
    for _ in $(seq 300); do grep -q '^listening ' "$W/$rep/$i/out" && break; sleep 0.1; done
    grep -q '^listening ' "$W/$rep/$i/out" || { echo "node $i did not start: $(cat "$W/$rep/$i/err")" >&2; exit 1; }
  done
  sleep 2  # a LAN that has been up a moment: its nodes have heard each other (mDNS answer window)
  emit dispy-peer fn_fresh_ms "$(probe function "$rep-fresh")" ms "$rep"
  emit dispy-peer fn_cached_ms "$(probe function "$rep-cached")" ms "$rep"
  emit dispy-peer prog_ms "$(probe program "$rep")" ms "$rep"
  stop_pids
  if [ -n "${KEEP_LOGS:-}" ]; then for i in $(seq "$N"); do cp "$W/$rep/$i/err" "$KEEP_LOGS/node$i-$rep.log"; done; fi
  rm -rf "${W:?}/$rep"
done
emit dispy-peer fn_exe_mb "$(python3 -c "import os; print(round(os.path.getsize('$PROBE') / 1e6, 1))")" MB 1
