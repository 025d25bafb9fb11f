#!/usr/bin/env bash
# Files both ways: a job's returned file (MB/s, beside staging the same size to a fresh node
# in the same pass), and a real workload beside GNU parallel on this machine: gzip of N_FILES
# files through `submit --each-file --return '*.gz'` (one node of 2 CPUs on 127.0.0.1) vs
# `parallel -j2 gzip` in place.
#
# Prints JSON lines {"bench","metric","value","unit","rep","date"} (the format of
# ../shared/bench/). Runs itself in a loopback-only network namespace and stops its node by
# PID.
#
# usage: bench/files.sh      env: REPS (3), MB (200), N_FILES (300), FILE_KB (1024)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REPS="${REPS:-3}"; MB="${MB:-200}"; N_FILES="${N_FILES:-300}"; FILE_KB="${FILE_KB:-1024}"
source "$ROOT/bench/common.sh"
if [ -z "${DISPY_FILES_IN_NETNS:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin dispy-peer)
  command -v parallel >/dev/null || { echo "needs GNU parallel (apt-get install parallel)" >&2; exit 2; }
fi
in_loopback_netns DISPY_FILES_IN_NETNS "$@"
BIN="$ROOT/target/release/dispy-peer"
workdir files
start_node() {
  : > "$W/out"
  "$BIN" serve --listen /ip4/127.0.0.1/tcp/0 --no-mdns --cpus 2 --secret files --dest-path "$1" >"$W/out" 2>"$W/err" &
  NODE=$!
  for _ in $(seq 100); do grep -q '^listening ' "$W/out" && break; sleep 0.1; done
  ADDR=$(sed -n 's/^listening //p' "$W/out" | head -1)
  [ -n "$ADDR" ] || { echo "node did not start: $(cat "$W/err")" >&2; exit 1; }
}
stop_node() { kill "$NODE"; wait "$NODE" || true; NODE=""; }
wall() { python3 -c 'import json,sys
print([json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]["summary"]["wall_secs"])' "$1"; }
run_secs() { python3 -c 'import json,sys
print(sum(d["run_secs"] for d in (json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")) if "job" in d))' "$1"; }
calc() { python3 -c "print(round($1, 1))"; }

# Inputs for the gzip workload: text-like, compressible about 4:1.
mkdir -p "$W/in"
for i in $(seq -w 1 "$N_FILES"); do
  head -c $((FILE_KB * 768)) /dev/urandom | base64 -w 100 > "$W/in/f$i.txt"
done
printf '#!/bin/sh\nexec gzip -k -- "$1"\n' > "$W/gz.sh"; chmod +x "$W/gz.sh"
printf '#!/bin/sh\nhead -c %s /dev/urandom > out.bin\n' $((MB << 20)) > "$W/make.sh"; chmod +x "$W/make.sh"
head -c $((MB << 20)) /dev/urandom > "$W/dep.bin"

for rep in $(seq "$REPS"); do
  # A returned file: the submit's wall time less the job's own run time (an upper bound on
  # the transfer: it also counts greeting and reserving the node).
  start_node "$W/node$rep"
  "$BIN" submit "$W/make.sh" --peer "$ADDR" --secret files --no-mdns --json --return out.bin \
      --results-dir "$W/ret$rep" > "$W/ret.json"
  t=$(python3 -c "print($(wall "$W/ret.json") - $(run_secs "$W/ret.json"))")
  emit dispy-peer return_mb_per_s "$(calc "$MB * 1.048576 / $t")" MB/s "$rep"
  stop_node
  # Staging the same size to a fresh node, same pass.
  export XDG_CACHE_HOME="$W/cache$rep"
  start_node "$W/stage$rep"
  "$BIN" submit /bin/true -f "$W/dep.bin" --peer "$ADDR" --secret files --no-mdns --json > "$W/stage.json"
  emit dispy-peer stage_mb_per_s "$(calc "$MB * 1.048576 / $(wall "$W/stage.json")")" MB/s "$rep"
  stop_node
  rm -rf "$W/node$rep" "$W/stage$rep" "$W/ret$rep"

  # gzip of N_FILES files: dispy-peer on one local node, then GNU parallel in place.
  start_node "$W/gz$rep"
  t0=$(date +%s.%N)
  "$BIN" submit "$W/gz.sh" --each-file "$W"/in/*.txt --return '*.gz' --results-dir "$W/gzout$rep" \
      --peer "$ADDR" --secret files --no-mdns --json > "$W/gz.json"
  t1=$(date +%s.%N)
  n=$(find "$W/gzout$rep" -name '*.gz' | wc -l)
  [ "$n" = "$N_FILES" ] || { echo "only $n of $N_FILES files came back" >&2; exit 1; }
  emit dispy-peer gzip_files_per_s "$(calc "$N_FILES / ($t1 - $t0)")" files/s "$rep"
  stop_node
  rm -rf "$W/gz$rep" "$W/gzout$rep"
  mkdir -p "$W/par"; cp "$W"/in/*.txt "$W/par/"
  t0=$(date +%s.%N)
  parallel -j2 gzip -k ::: "$W"/par/*.txt
  t1=$(date +%s.%N)
  emit gnu-parallel gzip_files_per_s "$(calc "$N_FILES / ($t1 - $t0)")" files/s "$rep"
  rm -rf "$W/par"
done
