#!/usr/bin/env bash
# A long run watched in the web monitor (issue 13): N `/bin/true` jobs from `--args-file`
# through one node of 2 CPUs on 127.0.0.1, once without `--web` and once with it while an
# open page's connection follows `/events` (curl, as the page's EventSource does) and a
# script polls `/api/status` every second. Prints, per run: wall time, the client's CPU
# seconds and peak RSS, and for the watched run the events received, their bytes, and the
# last status's counts (which must add up to N).
#
# Prints JSON lines {"bench","metric","value","unit","rep","date"} (the format of
# ../shared/bench/). Runs itself in a loopback-only network namespace and stops what it
# started by PID.
#
# usage: bench/web.sh      env: REPS (1), N (100000), BIN (this tree's release build)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REPS="${REPS:-1}"; N="${N:-100000}"
source "$ROOT/bench/common.sh"
command -v curl >/dev/null || { echo "bench/web.sh needs curl: apt-get install -y curl" >&2; exit 1; }
if [ -z "${DISPY_WEB_IN_NETNS:-}" ] && [ -z "${BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin dispy-peer)
fi
in_loopback_netns DISPY_WEB_IN_NETNS "$@"
BIN="${BIN:-$ROOT/target/release/dispy-peer}"
workdir web
READER=""
trap 'for p in $READER $NODE; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$W"' EXIT

seq "$N" > "$W/jobs.txt"
"$BIN" serve --listen /ip4/127.0.0.1/tcp/0 --no-mdns --cpus 2 --secret web --dest-path "$W/node" >"$W/out" 2>"$W/err" &
NODE=$!
for _ in $(seq 100); do grep -q '^listening ' "$W/out" && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening //p' "$W/out" | head -1)
[ -n "$ADDR" ] || { echo "node did not start: $(cat "$W/err")" >&2; exit 1; }

# run NAME [ARGS...]: one submit of the N jobs; its wall time, CPU and peak RSS.
run() {
  local name="$1"; shift
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S %M' -o "$W/$name.time" "$BIN" submit /bin/true --args-file "$W/jobs.txt" --peer "$ADDR" \
    --secret web --no-mdns --quiet "$@" >"$W/$name.out" 2>"$W/$name.err" &
  local pid=$!
  if [ "$name" = watched ]; then
    local url=""
    for _ in $(seq 100); do
      url=$(sed -n 's/.*web monitor at \(http[^ ]*\).*/\1/p' "$W/$name.err" | head -1)
      [ -n "$url" ] && break; sleep 0.1
    done
    [ -n "$url" ] || { echo "no web monitor URL: $(cat "$W/$name.err")" >&2; exit 1; }
    local host=${url#http://}; host=${host%%/*}
    curl -sN "http://$host/events" > "$W/events" &
    READER=$!
    while kill -0 "$pid" 2>/dev/null; do
      curl -s "http://$host/api/status" > "$W/status.new" 2>/dev/null && [ -s "$W/status.new" ] && mv "$W/status.new" "$W/status"
      sleep 1
    done
  fi
  wait "$pid" || true
  t1=$(date +%s.%N)
  read -r user sys rss < "$W/$name.time"
  emit web "${name}_wall_s" "$(python3 -c "print(round($t1 - $t0, 2))")" s "$rep"
  emit web "${name}_client_cpu_s" "$(python3 -c "print(round($user + $sys, 2))")" s "$rep"
  emit web "${name}_client_peak_rss_mb" "$((rss / 1024))" MB "$rep"
}

for rep in $(seq "$REPS"); do
  run plain
  run watched --web 127.0.0.1:0
  kill "$READER" 2>/dev/null || true; wait "$READER" 2>/dev/null || true; READER=""
  emit web watched_events "$(grep -c '^event:' "$W/events" || true)" events "$rep"
  emit web watched_event_bytes "$(stat -c %s "$W/events")" bytes "$rep"
  # The last status polled while the run went: its counts.
  python3 - "$W/status" "$N" <<'PY' >&2
import json, sys
s = json.load(open(sys.argv[1]))
c = s["counts"]
print(f"last /api/status polled: {c}; expected total {sys.argv[2]}")
PY
done
