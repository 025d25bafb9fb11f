#!/usr/bin/env bash
# Where a program job's CPU goes (issue 14): one `serve --cpus 2` on 127.0.0.1 (a
# loopback-only namespace) and `submit /bin/true` with N (5000) jobs. Prints JSON lines:
#   jobs_per_s           N / the cluster's wall time (as submit reports it)
#   node_cpu_us_per_job  the serve process's own user+sys CPU per job (/proc/PID/stat)
#   jobs_cpu_us_per_job  its reaped children's (the jobs: fork, exec, /bin/true, exit)
#   client_cpu_us_per_job  submit's user+sys per job
#   forkexec_cpu_us      the machine's fork+exec+wait of /bin/true, CPU per spawn, 1 at a
#                        time (the limit: ../shared/bench/limits/forkexec.c's work)
# With PERF=1 the whole machine is sampled meanwhile (`perf record -a -g`) and the top
# symbols of each process kind are printed to stderr (the profile kept as PERF_OUT if set).
#
# usage: bench/progcpu.sh     env: N (5000), REPS (3), PERF (0), BIN (release build)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/bench/common.sh"
in_loopback_netns DISPY_PROGCPU_NETNS "$@"
N="${N:-5000}"; REPS="${REPS:-3}"; PERF="${PERF:-0}"
if [ -z "${BIN:-}" ]; then (cd "$ROOT" && cargo build --release --quiet --bin dispy-peer); fi
BIN="${BIN:-$ROOT/target/release/dispy-peer}"
workdir progcpu
TCK=$(getconf CLK_TCK)
cpu() { # cpu PID: "own children" CPU seconds of a live process (utime+stime, cutime+cstime)
  python3 -c '
import sys
f = open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split()
t = float(sys.argv[2])
print((int(f[11]) + int(f[12])) / t, (int(f[13]) + int(f[14])) / t)' "$1" "$TCK"
}
python3 - "$N" >"$W/args" <<'EOF'
import sys
for i in range(int(sys.argv[1])): print(i)  # /bin/true ignores its argument
EOF
for rep in $(seq "$REPS"); do
  "$BIN" serve --listen /ip4/127.0.0.1/tcp/0 --no-mdns --cpus 2 --secret bench \
    --dest-path "$W/dest$rep" >"$W/out" 2>"$W/err" &
  NODE=$!
  for _ in $(seq 100); do grep -q '^listening ' "$W/out" && break; sleep 0.1; done
  ADDR=$(awk '/^listening /{print $2; exit}' "$W/out")
  [ -n "$ADDR" ] || { echo "the node did not start: $(cat "$W/err")" >&2; exit 1; }
  read -r own0 kids0 < <(cpu "$NODE")
  if [ "$PERF" = 1 ]; then perf record -q -a -g -o "$W/all.perf" 2>/dev/null & PERFPID=$!; sleep 0.5; fi
  /usr/bin/time -f "%U %S" -o "$W/time" "$BIN" submit /bin/true --args-file "$W/args" --peer "$ADDR" \
    --secret bench --no-mdns --json >"$W/submit.json" 2>/dev/null
  if [ "$PERF" = 1 ]; then kill -INT "$PERFPID"; wait "$PERFPID" || true; fi
  read -r own1 kids1 < <(cpu "$NODE")
  kill "$NODE"; wait "$NODE" 2>/dev/null || true; NODE=""
  python3 - "$N" "$own0" "$own1" "$kids0" "$kids1" "$(cat "$W/time")" "$W/submit.json" "$rep" "$DATE" <<'EOF'
import json, sys
n = int(sys.argv[1]); own = float(sys.argv[3]) - float(sys.argv[2]); kids = float(sys.argv[5]) - float(sys.argv[4])
u, s = map(float, sys.argv[6].split()); last = open(sys.argv[7]).read().strip().splitlines()[-1]
wall = json.loads(last)["summary"]["wall_secs"]
for metric, value, unit in [("jobs_per_s", n / wall, "jobs/s"), ("node_cpu_us_per_job", own / n * 1e6, "us"),
                            ("jobs_cpu_us_per_job", kids / n * 1e6, "us"), ("client_cpu_us_per_job", (u + s) / n * 1e6, "us")]:
    print(json.dumps({"bench": "progcpu", "metric": metric, "value": round(value, 1), "unit": unit, "rep": int(sys.argv[8]), "date": sys.argv[9]}))
EOF
  if [ "$PERF" = 1 ]; then
    for comm in dispy-peer true; do
      echo "== top symbols of '$comm' (share of all samples)" >&2
      perf report -i "$W/all.perf" --comms "$comm" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -25 >&2 || true
    done
    [ -n "${PERF_OUT:-}" ] && cp "$W/all.perf" "$PERF_OUT"
    perf report -i "$W/all.perf" --no-children --sort comm --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -10 >&2 || true
  fi
done
# The limit: the same spawns without dispy-peer (fork, exec /bin/true, wait), CPU per spawn.
python3 - "$N" "$DATE" <<'EOF'
import json, os, resource, sys, time
n = int(sys.argv[1]); t = time.monotonic()
for _ in range(n):
    pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
    os.waitpid(pid, 0)
wall = time.monotonic() - t
c = resource.getrusage(resource.RUSAGE_CHILDREN); me = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"bench": "progcpu", "metric": "forkexec_cpu_us", "value": round((c.ru_utime + c.ru_stime + me.ru_utime + me.ru_stime) / n * 1e6, 1), "unit": "us", "rep": 1, "date": sys.argv[2]}))
print(json.dumps({"bench": "progcpu", "metric": "forkexec_per_s", "value": round(n / wall), "unit": "spawns/s", "rep": 1, "date": sys.argv[2]}))
EOF
