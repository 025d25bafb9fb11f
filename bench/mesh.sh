#!/usr/bin/env bash
# The mesh at LAN scale (issue 12): N `serve --cpus 1` nodes, each in its own network
# namespace on one bridge (mDNS on, 10.84.0.0/16), and a client in a namespace of its own.
# Per N, one JSON line:
#   idle_cpu_pct      CPU of all serve processes together (utime+stime from /proc/PID/stat)
#                     over IDLE_SECS with no client, SETTLE_SECS after the last node listened,
#                     in % of one CPU; it must grow at most linearly in N
#   conns_idle_*      established TCP connections per node then (its namespace's TCP table)
#   all_found_s, all_ready_s
#                     from the client's process start until it had found / reserved and
#                     staged every node (examples/mesh_probe.rs: the library's cluster events)
#   jobs_per_s        N*JOBS_PER_NODE `/bin/true` jobs through `submit --args-file`, over the
#                     cluster's wall time as submit reports it (discovery included)
#   jobs_per_s_run    the same jobs over first job start to last job end (after ready)
#   client_cpu_ms_per_job  the submit process's user+sys CPU per job
#   nodes_used, ok    nodes that ran a job; jobs that exited 0
#   conns_run_*       connections per node sampled every 0.5 s while submit runs (the
#                     highest sample; null when submit ended before a sample did)
#   serve_rss_mib     all serve processes' RSS together, idle
#   idle_cpu_steps    the same CPU per 10 s step of the window (% of one CPU)
#   idle_counts       with METRICS=1: what the nodes did over the idle window, per node
#                     ([mean, max] of each counter's growth, from `serve --metrics`):
#                     connections opened, Kademlia requests served, lookups run, ...
#
# usage: bench/mesh.sh [DISPY_PEER [MESH_PROBE]]
#   defaults: target/debug/dispy-peer, target/debug/examples/mesh_probe
#   (cargo build --workspace --all-targets builds both)
#   env: NODES ("1 8 32 64 128 256"), JOBS_PER_NODE (100), IDLE_SECS (10), SETTLE_SECS (5),
#        PROBE_TIMEOUT (60), SUBMIT_TIMEOUT (300), STATIC_ARP (1), METRICS (0)
# ARP: the kernel keeps ONE IPv4 neighbour table for all namespaces, its learnt entries capped
# machine-wide (net.ipv4.neigh.default.gc_thresh3, 1024); namespaces that talk to each other
# fill it past ~32 and lose packets (table_fulls in /proc/net/stat/arp_cache), which machines
# on a real LAN, each with its own table, would not. With STATIC_ARP=1 every namespace gets
# permanent entries (exempt from the cap) for every host and for mDNS's group.
# Needs root (ip netns), python3. Everything it starts runs inside the namespaces it makes;
# mDNS never runs in the machine's own. It stops what it started by PID and deletes its
# namespaces on exit, also on failure or Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$(realpath "${1:-$ROOT/target/debug/dispy-peer}")"
PROBE="$(realpath "${2:-$ROOT/target/debug/examples/mesh_probe}")"
for f in "$BIN" "$PROBE"; do
  [ -x "$f" ] || { echo "no $f: cargo build --workspace --all-targets" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "bench/mesh.sh makes network namespaces: run it as root" >&2; exit 2; }
NODES="${NODES:-1 8 32 64 128 256}"; JOBS_PER_NODE="${JOBS_PER_NODE:-100}"; STATIC_ARP="${STATIC_ARP:-1}"
IDLE_SECS="${IDLE_SECS:-10}"; SETTLE_SECS="${SETTLE_SECS:-5}"; METRICS="${METRICS:-0}"
export PROBE_TIMEOUT="${PROBE_TIMEOUT:-60}"; SUBMIT_TIMEOUT="${SUBMIT_TIMEOUT:-300}"
export PROBE_SECRET=bench
TICK=$(getconf CLK_TCK)
P="dpm$$"                                   # namespace names: $P-hub, $P-0 (client), $P-1 ...
W=$(mktemp -d /tmp/dispy-peer-mesh.XXXXXX)
PIDS=(); SPACES=()
source "$ROOT/bench/common.sh"

teardown() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1 && break; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  PIDS=()
  if [ "${#SPACES[@]}" -gt 0 ]; then
    printf 'netns del %s\n' "${SPACES[@]}" | ip -force -batch - 2>/dev/null || true
  fi
  SPACES=()
}
cleanup() { teardown; rm -rf "$W"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

addr() { if [ "$1" = 0 ]; then echo 10.84.255.1; else echo "10.84.$(($1 / 256)).$(($1 % 256))"; fi; }
mac() { printf '02:84:00:00:%02x:%02x' $(($1 / 256)) $(($1 % 256)); }

cpu_ticks() { # utime+stime of every serve process, summed
  local p s=0 f
  for p in "${PIDS[@]}"; do
    f=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null) || continue
    set -- $f
    s=$((s + ${12} + ${13}))
  done
  echo "$s"
}

conns() { # established TCP connections per node namespace, one figure per line
  # /proc/PID/net/tcp{,6} is the table of that process's namespace (one node in each): what
  # `ip netns exec NS ss -Htn state established` counts, without a process per namespace
  # (which takes seconds each on a loaded machine). State 01: established.
  local p
  for p in "${PIDS[@]}"; do
    cat "/proc/$p/net/tcp" "/proc/$p/net/tcp6" 2>/dev/null | awk '$4 == "01" {n++} END {print n + 0}'
  done
}

scrape() { # every node's /metrics into $W/<i>/$1 (METRICS=1), read inside its namespace
  local i=0 p
  for p in "${PIDS[@]}"; do
    i=$((i + 1))
    nsenter --net="/proc/$p/ns/net" curl -s -m 5 http://127.0.0.1:9464/metrics >"$W/$i/$1" 2>/dev/null || true
  done
}

counter_growth() { # per counter, [mean, max] over the nodes of its growth from m0 to m1
  python3 - "$W" "$1" <<'EOF'
import json, re, sys
w, n = sys.argv[1], int(sys.argv[2])
def read(path):  # counter (with its labels) -> value
    out = {}
    try:
        for line in open(path):
            m = re.match(r'^([a-z0-9_]+_total)(\{[^}]*\})? ([0-9.e+]+)$', line)
            if m:
                key = m.group(1) + (m.group(2) or "")
                out[key] = out.get(key, 0) + float(m.group(3))
    except OSError:
        pass
    return out
grow = {}
for i in range(1, n + 1):
    a, b = read(f"{w}/{i}/m0"), read(f"{w}/{i}/m1")
    for k in b:
        grow.setdefault(k, []).append(b[k] - a.get(k, 0))
print(json.dumps({k: [round(sum(v) / n, 1), max(v)] for k, v in sorted(grow.items()) if max(v) > 0}))
EOF
}

pct() { # TICKS SECS: CPU ticks over SECS as % of one CPU, with $3 decimals
  awk -v d="$1" -v hz="$TICK" -v s="$2" -v f="%.${3}f" 'BEGIN{printf f, 100 * d / hz / s}'
}

stats() { # "max mean" of the numbers on stdin
  awk 'BEGIN{m=0} {s+=$1; if ($1>m) m=$1; n++} END{printf "%d %.1f\n", m, (n ? s/n : 0)}'
}

for n in $NODES; do
  make_lan "$n" 16
  for i in $(seq "$n"); do
    mkdir -p "$W/$i"
    extra=(); [ "$METRICS" = 1 ] && extra=(--metrics 9464)
    ip netns exec "$P-$i" "$BIN" serve "${extra[@]}" --cpus 1 --name "s$i" --secret "$PROBE_SECRET" \
      --listen /ip4/0.0.0.0/tcp/9700 --dest-path "$W/$i/dest" --drain-timeout 1 \
      >"$W/$i/out" 2>"$W/$i/err" &
    PIDS+=($!)
  done
  for i in $(seq "$n"); do
    for _ in $(seq 600); do grep -q '^listening ' "$W/$i/out" && break; sleep 0.1; done
    grep -q '^listening ' "$W/$i/out" || { echo "node $i did not start: $(cat "$W/$i/err")" >&2; exit 1; }
  done
  sleep "$SETTLE_SECS"
  counts='{}'
  [ "$METRICS" = 1 ] && scrape m0
  t0=$(cpu_ticks); timeline=(); tp=$t0; left=$IDLE_SECS
  while [ "$left" -gt 0 ]; do # the window in steps of 10 s, for when in it the CPU went
    step=$((left < 10 ? left : 10)); sleep "$step"; left=$((left - step))
    tn=$(cpu_ticks); timeline+=("$(pct $((tn - tp)) "$step" 0)"); tp=$tn
  done
  t1=$tp
  [ "$METRICS" = 1 ] && scrape m1 && counts=$(counter_growth "$n")
  idle_pct=$(pct $((t1 - t0)) "$IDLE_SECS" 1)
  read -r idle_max idle_mean < <(conns | stats)
  rss_kib=0
  for p in "${PIDS[@]}"; do
    rss_kib=$((rss_kib + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done

  probe=$(ip netns exec "$P-0" "$PROBE" "$n" 2>"$W/probe.err") || true
  [ -n "$probe" ] || probe='{}'

  seq 0 $((n * JOBS_PER_NODE - 1)) >"$W/args"
  ip netns exec "$P-0" /usr/bin/time -f '%e %U %S' -o "$W/time" timeout "$SUBMIT_TIMEOUT" \
    "$BIN" submit /bin/true --json --secret "$PROBE_SECRET" --discover-timeout 10 \
    --args-file "$W/args" >"$W/jobs" 2>"$W/submit.err" &
  sub=$!
  run_max=null; run_mean=null
  sleep 0.3
  while kill -0 "$sub" 2>/dev/null; do
    read -r m a < <(conns | stats)
    # A sample that ends after submit did may have missed its connections.
    kill -0 "$sub" 2>/dev/null || break
    if [ "$run_max" = null ] || [ "$m" -gt "$run_max" ]; then run_max=$m; run_mean=$a; fi
    sleep 0.5
  done
  submit_rc=0; wait "$sub" || submit_rc=$?
  read -r _ cu cs <"$W/time" || { cu=0; cs=0; }
  python3 - "$W/jobs" "$n" "$idle_pct" "$idle_max" "$idle_mean" "$run_max" "$run_mean" "$rss_kib" \
      "$cu" "$cs" "$submit_rc" "$probe" "$counts" "${timeline[*]}" <<'EOF'
import json, sys
path, n, idle_pct, imax, imean, rmax, rmean, rss, cu, cs, rc, probe, counts, steps = sys.argv[1:]
jobs, summary = [], {}
for line in open(path):
    if line.startswith("{"):
        v = json.loads(line)
        if "job" in v:
            jobs.append(v)
        elif "summary" in v:
            summary = v
ok = sum(1 for j in jobs if j.get("exit_code") == 0)
wall = summary.get("summary", {}).get("wall_secs") or 0
starts = [j["start_us"] for j in jobs if j.get("start_us")]
ends = [j["end_us"] for j in jobs if j.get("end_us")]
run = (max(ends) - min(starts)) / 1e6 if starts and ends else 0
p = json.loads(probe)
out = {"nodes": int(n), "idle_cpu_pct": float(idle_pct),
       "conns_idle_max": int(imax), "conns_idle_mean": float(imean),
       "found": p.get("found"), "ready": p.get("ready"),
       "all_found_s": p.get("all_found_s"), "all_ready_s": p.get("all_ready_s"),
       "jobs": len(jobs), "ok": ok, "submit_exit": int(rc),
       "nodes_used": len({j.get("node") for j in jobs if j.get("node")}),
       "jobs_per_s": round(len(jobs) / wall) if wall else None,
       "jobs_per_s_run": round(len(jobs) / run) if run else None,
       "client_cpu_ms_per_job": round(1000 * (float(cu) + float(cs)) / len(jobs), 3) if jobs else None,
       "conns_run_max": json.loads(rmax), "conns_run_mean": json.loads(rmean),
       "serve_rss_mib": round(int(rss) / 1024)}
out["idle_cpu_steps"] = [int(x) for x in steps.split()]
if counts != "{}":
    out["idle_counts"] = json.loads(counts)
print(json.dumps(out), flush=True)
EOF
  teardown
  rm -rf "${W:?}"/[0-9]*
done
