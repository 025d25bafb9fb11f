#!/usr/bin/env bash
# dispy-peer's program-job benchmark, beside this machine's fork+exec rate measured in the
# same run (and dispy's, with WITH_DISPY=1, through ../shared/bench/dispy/run.sh).
#
# One node of 2 CPUs on 127.0.0.1; `submit` runs N_PROG (1000) `/bin/true` jobs. Prints
# JSON lines {"bench","metric","value","unit","rep","date"} (the format of ../shared/bench/)
# and appends them to $RESULTS_DIR/dispy-peer.jsonl. Runs itself in a private network
# namespace with only loopback, stops what it started by PID, and is bounded in time.
#
# Also stages a STAGE_MB (200) MiB dependency to a fresh node: MB/s and both sides' peak RSS
# (memory stays bounded: files move in 1 MiB chunks, one in flight per file).
#
# usage: bench/run.sh        env: REPS (3), N_PROG (1000), STAGE_MB (200), RESULTS_DIR (target/bench), WITH_DISPY (0)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared/bench}"
RESULTS_DIR="${RESULTS_DIR:-$ROOT/target/bench}"
REPS="${REPS:-3}"; N_PROG="${N_PROG:-1000}"; STAGE_MB="${STAGE_MB:-200}"
mkdir -p "$RESULTS_DIR"
export RESULTS_DIR

if [ -z "${DISPY_BENCH_IN_NETNS:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin dispy-peer)
  if [ "${WITH_DISPY:-0}" = "1" ]; then
    # dispy's virtualenv is installed here, outside the network namespace (no registry there).
    bash -c 'source "$1/lib/common.sh" && ensure_venv dispy "dispy==4.15.2" psutil >/dev/null' _ "$SHARED"
  fi
  export DISPY_BENCH_IN_NETNS=1
  exec unshare -n bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi

BIN="$ROOT/target/release/dispy-peer"
WORK=$(mktemp -d /tmp/dispy-peer-bench.XXXXXX)
NODE_PID=""
cleanup() {
  if [ -n "$NODE_PID" ]; then kill "$NODE_PID" 2>/dev/null || true; wait "$NODE_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
OUT="$RESULTS_DIR/dispy-peer.jsonl"
DATE=$(date -Is)
emit() { # emit BENCH METRIC VALUE UNIT REP
  printf '{"bench":"%s","metric":"%s","value":%s,"unit":"%s","rep":%s,"date":"%s"}\n' "$1" "$2" "$3" "$4" "$5" "$DATE" | tee -a "$OUT"
}

FORKEXEC=""
if [ -f "$SHARED/limits/forkexec.c" ] && command -v gcc >/dev/null; then
  gcc -O2 -o "$WORK/forkexec" "$SHARED/limits/forkexec.c" && FORKEXEC="$WORK/forkexec"
else
  echo "note: $SHARED/limits/forkexec.c or gcc missing; fork+exec rate not measured" >&2
fi

start_node() { # start_node DEST: sets NODE_PID and ADDR
  : > "$WORK/node.out"
  "$BIN" serve --listen /ip4/127.0.0.1/tcp/0 --no-mdns --cpus 2 --secret bench \
      --dest-path "$1" >"$WORK/node.out" 2>"$WORK/node.err" &
  NODE_PID=$!
  for _ in $(seq 100); do grep -q '^listening ' "$WORK/node.out" && break; sleep 0.1; done
  ADDR=$(sed -n 's/^listening //p' "$WORK/node.out" | head -1)
  [ -n "$ADDR" ] || { echo "node did not start: $(cat "$WORK/node.err")" >&2; exit 1; }
}
stop_node() { kill "$NODE_PID"; wait "$NODE_PID" || true; NODE_PID=""; }
summary() { # summary FILE EXPR: a field of submit --json's last line
  python3 -c 'import json,sys
last=[json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
print(eval(sys.argv[2], {}, {"s": last}))' "$1" "$2"
}
calc() { python3 -c "print(round($1, 1))"; }

ARGS=(); for _ in $(seq "$N_PROG"); do ARGS+=(-a ""); done
for rep in $(seq "$REPS"); do
  if [ -n "$FORKEXEC" ]; then
    for par in 1 2; do
      v=$("$FORKEXEC" fork 3000 "$par" /bin/true | python3 -c 'import json,sys; print(json.load(sys.stdin)["per_s"])')
      emit limits "fork_exec_true_par${par}_per_s" "$v" "spawns/s" "$rep"
    done
  fi
  start_node "$WORK/node$rep"
  t0=$(date +%s.%N)
  timeout 300 "$BIN" submit /bin/true "${ARGS[@]}" --peer "$ADDR" --secret bench --no-mdns --json >"$WORK/submit.json"
  t1=$(date +%s.%N)
  failed=$(summary "$WORK/submit.json" 's["failed"]')
  [ "$failed" = "0" ] || { echo "$failed jobs failed" >&2; exit 1; }
  emit dispy-peer prog_jobs_per_s "$(calc "$N_PROG / $(summary "$WORK/submit.json" 's["summary"]["wall_secs"]')")" "jobs/s" "$rep"
  emit dispy-peer prog_jobs_per_s_end_to_end "$(calc "$N_PROG / ($t1 - $t0)")" "jobs/s" "$rep"
  # As dispy's anchor measures it: from the node being ready (first job start) to the end.
  span=$(python3 -c 'import json,sys
jobs=[d for d in (json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")) if "job" in d]
print((max(j["end_us"] for j in jobs) - min(j["start_us"] for j in jobs)) / 1e6)' "$WORK/submit.json")
  emit dispy-peer prog_jobs_per_s_after_ready "$(calc "$N_PROG / $span")" "jobs/s" "$rep"
  stop_node

  # Staging: a fresh dest path, so every byte is sent; a fresh hash cache, so the client
  # reads the file to hash it, as on its first submit.
  export XDG_CACHE_HOME="$WORK/cache$rep"
  [ -f "$WORK/dep.bin" ] || head -c $((STAGE_MB * 1024 * 1024)) /dev/urandom > "$WORK/dep.bin"
  start_node "$WORK/stage$rep"
  echo 0 > "$WORK/client.rss"
  TIMECMD=(); [ -x /usr/bin/time ] && TIMECMD=(/usr/bin/time -f '%M' -o "$WORK/client.rss")   # apt-get install time
  "${TIMECMD[@]}" timeout 300 "$BIN" submit /bin/true -f "$WORK/dep.bin" \
      --peer "$ADDR" --secret bench --no-mdns --json >"$WORK/stage.json"
  node_rss=$(awk '/VmHWM/ {print $2}' "/proc/$NODE_PID/status")
  wall=$(summary "$WORK/stage.json" 's["summary"]["wall_secs"]')
  emit dispy-peer stage_mb_per_s "$(calc "$STAGE_MB * 1.048576 / $wall")" "MB/s" "$rep"
  emit dispy-peer stage_node_peak_rss_mb "$(calc "$node_rss / 1024")" "MB" "$rep"
  emit dispy-peer stage_client_peak_rss_mb "$(calc "$(cat "$WORK/client.rss") / 1024")" "MB" "$rep"
  stop_node
  rm -rf "$WORK/stage$rep" "$WORK/node$rep"
done

if [ "${WITH_DISPY:-0}" = "1" ]; then
  if [ -x "$SHARED/dispy/run.sh" ]; then
    MODES=prog REPS="$REPS" ANCHORS_NETNS=0 "$SHARED/dispy/run.sh"
  else
    echo "WITH_DISPY=1 but $SHARED/dispy/run.sh is missing" >&2; exit 1
  fi
fi
echo "wrote $OUT" >&2
