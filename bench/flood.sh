#!/usr/bin/env bash
# Jobs/s of a client holding the secret while a host WITHOUT it floods the node with idle
# TCP connections, beside the same run with no flood; and the node's descriptors and RSS
# during the run (the highest sample) and 5 s after the flood stopped. The node runs under
# `prlimit --nofile=1024` (the common soft limit, with no hard room to raise it).
#
# usage: bench/flood.sh [DISPY_PEER]   env: N (2000 jobs), RATE (400 connections/s),
#                                      HOLD (3 s each connection is held)
# Needs python3 (the flooder) and prlimit. Runs itself in a loopback-only network namespace
# (the flooder connects from 127.0.0.2, the client from 127.0.0.1); stops what it started by PID.
set -euo pipefail
BIN="${1:-target/release/dispy-peer}"
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release, or give the binary" >&2; exit 2; }
BIN=$(realpath "$BIN")
if [ -z "${DISPY_FLOOD_IN_NETNS:-}" ]; then
  export DISPY_FLOOD_IN_NETNS=1
  exec unshare -n bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
N="${N:-2000}"; RATE="${RATE:-400}"; HOLD="${HOLD:-3}"
ARGS=(); for _ in $(seq "$N"); do ARGS+=(-a ""); done
W=$(mktemp -d /tmp/dispy-peer-flood.XXXXXX)
NODE=""; FLOOD=""; SAMPLER=""
cleanup() {
  for p in $SAMPLER $FLOOD $NODE; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

cat >"$W/flood.py" <<'EOF'
import collections, resource, socket, sys, time
host, port, rate, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held, gap, nxt, opened = collections.deque(), 1.0 / rate, time.monotonic(), 0
end = nxt + 600
while time.monotonic() < end:
    now = time.monotonic()
    while held and now - held[0][0] > hold:
        held.popleft()[1].close()
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.settimeout(1)
    try:
        s.connect((host, port))
        held.append((now, s))
        opened += 1
    except OSError:
        s.close()
    nxt += gap
    d = nxt - time.monotonic()
    if d > 0:
        time.sleep(d)
EOF

# Highest open-descriptor count and RSS (KiB) of PID, sampled every 0.2 s, into FILE.
sample() {
  local pid=$1 file=$2 max_fd=0 max_rss=0 fd rss
  while kill -0 "$pid" 2>/dev/null; do
    fd=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "$fd" -gt "$max_fd" ] && max_fd=$fd
    [ "${rss:-0}" -gt "$max_rss" ] && max_rss=$rss
    echo "$max_fd $max_rss" >"$file"
    sleep 0.2
  done
}

"$BIN" keygen "$W/key" >/dev/null
for mode in none flood; do
  rm -rf "$W/node"; : >"$W/out"
  prlimit --nofile=1024 -- "$BIN" serve --listen /ip4/127.0.0.1/tcp/0 --no-mdns --cpus 2 \
    --secret-file "$W/key" --dest-path "$W/node" >"$W/out" 2>"$W/err" &
  NODE=$!
  for _ in $(seq 100); do grep -q '^listening ' "$W/out" && break; sleep 0.1; done
  addr=$(sed -n 's/^listening //p' "$W/out" | head -1)
  [ -n "$addr" ] || { echo "node did not start: $(cat "$W/err")" >&2; exit 1; }
  port=$(echo "$addr" | cut -d/ -f5)
  if [ "$mode" = flood ]; then
    python3 "$W/flood.py" 127.0.0.1 "$port" "$RATE" "$HOLD" &
    FLOOD=$!
    sleep 2
  fi
  echo "0 0" >"$W/during"
  sample "$NODE" "$W/during" & SAMPLER=$!
  start=$(date +%s.%N)
  ok=1
  timeout 300 "$BIN" submit /bin/true "${ARGS[@]}" --peer "$addr" --secret-file "$W/key" --no-mdns --json \
    >"$W/jobs" 2>"$W/submit.err" || ok=0
  end=$(date +%s.%N)
  kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=""
  [ -n "$FLOOD" ] && { kill "$FLOOD"; wait "$FLOOD" 2>/dev/null || true; FLOOD=""; }
  sleep 5
  after_fd=$(ls "/proc/$NODE/fd" | wc -l)
  after_rss=$(awk '/^VmRSS/ {print $2}' "/proc/$NODE/status")
  read -r during_fd during_rss <"$W/during"
  done_jobs=$(grep -c '"exit_code":0,' "$W/jobs" || true)
  refused=$(grep -c 'refusing incoming connections' "$W/err" || true)
  kill "$NODE"; wait "$NODE" 2>/dev/null || true; NODE=""
  awk -v m="$mode" -v n="$N" -v d="$done_jobs" -v ok="$ok" -v s="$start" -v e="$end" \
      -v df="$during_fd" -v dr="$during_rss" -v af="$after_fd" -v ar="$after_rss" -v r="$RATE" -v rl="$refused" \
    'BEGIN { printf "{\"flood\":\"%s\",\"rate_per_s\":%s,\"jobs\":%d,\"succeeded\":%d,\"submit_ok\":%d,\"jobs_per_s\":%.0f,\"node_fds_during\":%d,\"node_rss_kib_during\":%d,\"node_fds_after\":%d,\"node_rss_kib_after\":%d,\"refusal_log_lines\":%d}\n", m, (m=="flood"?r:0), n, d, ok, d/(e-s), df, dr, af, ar, rl }'
done
