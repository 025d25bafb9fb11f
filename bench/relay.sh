#!/usr/bin/env bash
# Relayed vs direct (issue 15): the library benchmark (examples/bench.rs, function and program
# jobs, no staging) from a client behind a NAT router to one node, over three paths, each on a
# fresh set of network namespaces with the topology of tests/nat.rs:
#   10.100.0.0/24  the "internet": a relay node (`serve --relay`, 10.100.0.10) and the routers'
#                  wan sides (routerA 10.100.0.1, routerB 10.100.0.2)
#   10.100.1.0/24  site A behind routerA: the node (10.100.1.10)
#   10.100.2.0/24  site B behind routerB: the client (10.100.2.10)
# A router masquerades out of `wan` and drops what arrives there unasked (nftables).
#   direct        the node on the internet itself (10.100.0.20, no site A); routerB `masquerade`
#   hole-punched  both routers `masquerade`: they keep a port's mapping, dcutr opens a direct link
#   relayed       both routers `masquerade fully-random`: no hole punch, every byte via the relay
# The client knows only the relay's address (BENCH_BOOTSTRAP), finds the node (`--name bnode`)
# through Kademlia and uses it alone (BENCH_NODES=bnode). Per path and repetition, through
# dispy::Cluster: fn_jobs_per_s (N_FN trivial function jobs), fn_round_trip_ms (median of 50
# single jobs), prog_jobs_per_s (N_PROG `/bin/true`), as JSON lines
# {"bench":"relay-<path>","metric","value","unit","rep","date"} (../shared/bench/'s format).
# The example says how its clusters reached the node (the stats' `reach`); a path that did not
# end up as labelled is reported on stderr and the script exits 3 after printing its figures.
#
# usage: bench/relay.sh      env: N_FN (5000), N_PROG (300), REPS (3),
#                                 PATHS ("direct hole-punched relayed"),
#                                 CIRCUIT_MIB (the relay's --relay-circuit-mib; its default, 64),
#                                 RUN_TIMEOUT (900 s per path's client run), KEEP_LOGS=DIR
# Needs root (ip netns) and nftables' `nft`. Everything it starts runs inside the namespaces it
# makes, with --no-mdns. It stops what it started by PID and deletes its namespaces on exit,
# also on failure or Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
N_FN="${N_FN:-5000}"; N_PROG="${N_PROG:-300}"; REPS="${REPS:-3}"
PATHS="${PATHS:-direct hole-punched relayed}"; RUN_TIMEOUT="${RUN_TIMEOUT:-900}"
[ "$(id -u)" = 0 ] || { echo "bench/relay.sh makes network namespaces: run it as root" >&2; exit 2; }
nft --version >/dev/null 2>&1 || { echo "bench/relay.sh needs nftables' nft (apt-get install -y nftables)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release --quiet --bin dispy-peer --example bench)
BIN="$ROOT/target/release/dispy-peer"; BENCH="$ROOT/target/release/examples/bench"
P="dpr$$"
W=$(mktemp -d /tmp/dispy-peer-relay.XXXXXX)
L="$W/logs"; mkdir "$L"
PIDS=(); SPACES=()
source "$ROOT/bench/common.sh"

cleanup() {
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp -r "$L"/. "$KEEP_LOGS"/ || true; fi
  lan_cleanup
}
trap cleanup EXIT
trap 'exit 130' INT TERM

relay_args=(); [ -n "${CIRCUIT_MIB:-}" ] && relay_args=(--relay-circuit-mib "$CIRCUIT_MIB")

# at HOST CMD...: runs CMD in host HOST's namespace. (Not for a background process: `at … &`
# forks a subshell, and its $! is not the process's PID; those call `ip netns exec` itself,
# which execs CMD.)
at() { local h=$1; shift; ip netns exec "$P-$h" "$@"; }
# add_ns NAME: a namespace with loopback up.
add_ns() { ip netns add "$P-$1"; SPACES+=("$P-$1"); ip -n "$P-$1" link set lo up; }
# add_lan NAME: a namespace holding a bridge, br0.
add_lan() { add_ns "$1"; ip -n "$P-$1" link add br0 type bridge; ip -n "$P-$1" link set br0 up; }
# plug HOST LAN IFNAME CIDR: HOST's interface IFNAME at CIDR, cabled to LAN's bridge.
plug() {
  ip -n "$P-$2" link add "v-$1" type veth peer name "$3" netns "$P-$1"
  ip -n "$P-$2" link set "v-$1" master br0 up
  ip -n "$P-$1" addr add "$4" dev "$3"
  ip -n "$P-$1" link set "$3" up
}
# router_rules MASQUERADE: nftables for a site router, as tests/nat.rs: masquerade out of
# `wan`, and drop what arrives on `wan` unasked (without that the router's own stack would
# answer a hole punch's first SYN with a reset).
router_rules() {
  cat <<EOF
table ip nat { chain post { type nat hook postrouting priority 100; oifname "wan" $1; }; }
table inet filter {
  chain input { type filter hook input priority 0; iifname "wan" ct state new drop; }
  chain forward { type filter hook forward priority 0; iifname "wan" ct state new drop; }
}
EOF
}
# router NAME LAN WAN_IP LAN_CIDR MASQUERADE: a NAT router between the internet and LAN.
router() {
  add_ns "$1"
  plug "$1" inet wan "$3/24"
  plug "$1" "$2" lan "$4"
  at "$1" sysctl -qw net.ipv4.ip_forward=1
  router_rules "$5" | at "$1" nft -f -
}
# sites PATH: the namespaces of one path (see the header).
sites() {
  local masq=masquerade
  [ "$1" = relayed ] && masq="masquerade fully-random"
  add_lan inet
  add_ns relay; plug relay inet eth0 10.100.0.10/24
  add_lan siteB
  router routerB siteB 10.100.0.2 10.100.2.1/24 "$masq"
  add_ns client; plug client siteB eth0 10.100.2.10/24
  ip -n "$P-client" route add default via 10.100.2.1
  add_ns node
  if [ "$1" = direct ]; then
    plug node inet eth0 10.100.0.20/24
  else
    add_lan siteA
    router routerA siteA 10.100.0.1 10.100.1.1/24 "$masq"
    plug node siteA eth0 10.100.1.10/24
    ip -n "$P-node" route add default via 10.100.1.1
  fi
}
# wait_for FILE TEXT SECS: waits until FILE holds TEXT; fails after SECS.
wait_for() {
  for _ in $(seq "$(($3 * 10))"); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
# serve HOST NAME ARGS...: starts `dispy-peer serve` in HOST's namespace; logs in $L/PATH-NAME.*
serve() {
  local host=$1 name=$2; shift 2
  ip netns exec "$P-$host" "$BIN" serve --name "$name" --no-mdns --cpus 2 --secret bench \
    --listen /ip4/0.0.0.0/tcp/9700 --drain-timeout 1 --dest-path "$W/dest-$path-$name" "$@" \
    >"$L/$path-$name.out" 2>"$L/$path-$name.err" &
  PIDS+=($!)
}
# teardown: stops the path's processes and deletes its namespaces.
teardown() {
  stop_pids
  if [ "${#SPACES[@]}" -gt 0 ]; then printf 'netns del %s\n' "${SPACES[@]}" | ip -force -batch - 2>/dev/null || true; fi
  SPACES=()
}

mismatch=0
for path in $PATHS; do
  case "$path" in direct|hole-punched|relayed) ;; *) echo "unknown path $path" >&2; exit 2 ;; esac
  sites "$path"
  serve relay relay --relay "${relay_args[@]}"
  wait_for "$L/$path-relay.out" '^listening ' 20 ||
    { echo "$path: the relay did not start: $(tail -5 "$L/$path-relay.err")" >&2; exit 1; }
  relay_id=$(grep -m1 '^listening ' "$L/$path-relay.out" | sed 's|.*/p2p/||')
  relay_addr="/ip4/10.100.0.10/tcp/9700/p2p/$relay_id"
  serve node bnode --bootstrap "$relay_addr"
  wait_for "$L/$path-bnode.out" '^listening ' 20 ||
    { echo "$path: the node did not start: $(tail -5 "$L/$path-bnode.err")" >&2; exit 1; }
  if [ "$path" != direct ]; then
    # Autonat finds the node unreachable (the relay's dial-back is dropped by the NAT), and
    # the node takes a slot on the relay it knows from bootstrapping.
    wait_for "$L/$path-bnode.err" 'reachable through a relay' 60 ||
      { echo "$path: the node never took a slot on the relay: $(tail -5 "$L/$path-bnode.err")" >&2; exit 1; }
  fi
  ip netns exec "$P-client" env BENCH_BOOTSTRAP="$relay_addr" BENCH_NODES=bnode BENCH_SECRET=bench STAGE_MB=0 \
    N_FN="$N_FN" N_PROG="$N_PROG" REPS="$REPS" timeout -k 10 "$RUN_TIMEOUT" "$BENCH" \
    >"$L/$path-bench.jsonl" 2>"$L/$path-bench.err" &
  client=$!; PIDS+=("$client")
  rc=0; wait "$client" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "$path: bench exited $rc: $(tail -20 "$L/$path-bench.err")" >&2; exit 1
  fi
  reach=$(awk '$1 == "reach" { print $4 }' "$L/$path-bench.err" | sort -u | paste -sd, -)
  if [ "$reach" != "$path" ]; then
    echo "$path: the client reached the node as '$reach', not as labelled" >&2; mismatch=1
  fi
  jq -r '[.metric, .value, .unit, .rep] | @tsv' "$L/$path-bench.jsonl" |
    while IFS=$'\t' read -r metric value unit rep; do emit "relay-$path" "$metric" "$value" "$unit" "$rep"; done
  teardown
done
[ "$mismatch" = 0 ] || exit 3
