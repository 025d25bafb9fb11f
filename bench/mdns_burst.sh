#!/usr/bin/env bash
# mDNS discovery on one LAN of N nodes (issue 12): how many nodes one `nodes` client finds.
#
# Makes one bridge namespace and N+1 host namespaces on it (10.82.0.0/16), starts N
# `dispy-peer serve --cpus 1 --secret S` (mDNS on, inside the namespaces only), waits until all
# listen and SETTLE more seconds, measures the nodes' idle CPU over CPU_WINDOW seconds, then runs
# `dispy-peer nodes --json --discover-timeout DISCOVER` ROUNDS times from the client namespace and
# prints one JSON line per round {"n","round","mdns_heard","found","client_s","nodes_idle_cpu_pct"}:
# mdns_heard = nodes the client heard of by mDNS, found = nodes `nodes` listed (it also had to
# connect to them and ask within the window); lan_mcast_pps = multicast packets/s on the LAN
# while the nodes idle (mDNS), measured with their CPU over CPU_WINDOW (default 10) seconds.
# Stops its processes by PID and deletes its namespaces on exit (also on failure or Ctrl-C).
#
# ARP: the kernel's IPv4 neighbour table is ONE table for all network namespaces of the machine,
# and its dynamic entries are capped by net.ipv4.neigh.default.gc_thresh3 (1024 by default).
# N namespaces that all talk to each other need ~N^2 entries: past ~32 nodes (or while another
# namespace benchmark runs) new entries fail ("neighbor table overflow!" in dmesg) and packets
# are dropped, multicast ones too (224.0.0.251 takes an entry per namespace): discovery looks
# broken when mDNS is not at fault. Separate machines
# each have their own table, so with STATIC_ARP=1 (the default) every namespace gets permanent
# entries for all the others (exempt from the cap), as a real LAN of machines would behave.
#
# usage: sudo bench/mdns_burst.sh [DISPY_PEER_BIN]
#   env: N (64), ROUNDS (3), DISCOVER (2), SETTLE (10), CPU_WINDOW (10), STATIC_ARP (1),
#        KEEP (keep the work dir), NODE_LOG / CLIENT_LOG (RUST_LOG of the nodes / the client)
# The binary defaults to target/debug/dispy-peer (build it first: cargo build --bin dispy-peer).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${1:-$ROOT/target/debug/dispy-peer}"
N="${N:-64}"; ROUNDS="${ROUNDS:-3}"; DISCOVER="${DISCOVER:-2}"; SETTLE="${SETTLE:-10}"
CPU_WINDOW="${CPU_WINDOW:-10}"
[ -x "$BIN" ] || { echo "no executable $BIN (cargo build --bin dispy-peer)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (creates network namespaces)" >&2; exit 2; }
command -v ip >/dev/null || { echo "needs iproute2's ip" >&2; exit 2; }
[ "$N" -ge 1 ] && [ "$N" -le 2000 ] || { echo "N must be 1..2000" >&2; exit 2; }

P="dmb$$"                      # namespace prefix, unique per run
W=$(mktemp -d /tmp/dispy-mdns-burst.XXXXXX)
PIDS=()
NSS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

addns() { ip netns add "$1"; NSS+=("$1"); ip -n "$1" link set lo up; }
LAN="$P-lan"
addns "$LAN"
ip -n "$LAN" link add br0 type bridge
ip -n "$LAN" link set br0 up
# Host k (0 = the client, 1..N = nodes): its namespace, address and (fixed) MAC.
hname() { if [ "$1" = 0 ]; then echo c; else echo "n$1"; fi; }
hip() { if [ "$1" = 0 ]; then echo 10.82.255.1; else echo "10.82.$(($1 / 250)).$(($1 % 250 + 1))"; fi; }
hmac() { printf '02:82:00:00:%02x:%02x' $(($1 / 256)) $(($1 % 256)); }
for k in $(seq 0 "$N"); do
  h=$(hname "$k")
  addns "$P-$h"
  ip -n "$LAN" link add "p$h" type veth peer name eth0 address "$(hmac "$k")" netns "$P-$h"
  ip -n "$LAN" link set "p$h" master br0
  ip -n "$LAN" link set "p$h" up
  ip -n "$P-$h" addr add "$(hip "$k")/16" dev eth0
  ip -n "$P-$h" link set eth0 up
done
if [ "${STATIC_ARP:-1}" = 1 ]; then
  {
    # Multicast destinations take a neighbour entry too (NOARP, but counted): mDNS's group.
    echo "neigh replace 224.0.0.251 lladdr 01:00:5e:00:00:fb dev eth0 nud permanent"
    for k in $(seq 0 "$N"); do echo "neigh replace $(hip "$k") lladdr $(hmac "$k") dev eth0 nud permanent"; done
  } >"$W/arp"
  for k in $(seq 0 "$N"); do ip -n "$P-$(hname "$k")" -batch "$W/arp"; done
fi

for i in $(seq 1 "$N"); do
  mkdir -p "$W/n$i"
  # `ip netns exec` execs the binary: the PID is the node's.
  RUST_LOG="${NODE_LOG:-warn}" ip netns exec "$P-n$i" "$BIN" serve --cpus 1 --secret S --name "n$i" --dest-path "$W/n$i" \
    >"$W/n$i.out" 2>"$W/n$i.err" &
  PIDS+=($!)
done

deadline=$((SECONDS + 60 + N / 4))
for i in $(seq 1 "$N"); do
  until grep -q '^listening ' "$W/n$i.out" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "node n$i did not start: $(tail -3 "$W/n$i.err")" >&2; exit 1; }
    sleep 0.1
  done
done
sleep "$SETTLE"

cpu_ticks() { # the nodes' user+system clock ticks, in all: one read of every /proc/PID/stat
  local files=() pid
  for pid in "${PIDS[@]}"; do files+=("/proc/$pid/stat"); done
  awk '{ t += $14 + $15 } END { print t + 0 }' "${files[@]}" 2>/dev/null
}
# Multicast frames on the LAN: every one reaches the bridge's own interface, unicast ones do
# not (and ARP is static): with the nodes idle, these are mDNS packets (a few IPv6 ND/MLD).
mcast() { ip netns exec "$LAN" cat /sys/class/net/br0/statistics/rx_packets; }
m0=$(mcast); w0=$(date +%s.%N); t0=$(cpu_ticks); sleep "$CPU_WINDOW"; t1=$(cpu_ticks); w1=$(date +%s.%N); m1=$(mcast)
mcast_pps=$(awk -v d="$((m1 - m0))" -v a="$w0" -v b="$w1" 'BEGIN { printf "%.0f", d / (b - a) }')
# In % of one CPU, over the wall time actually elapsed between the two reads.
idle_pct=$(awk -v d="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v a="$w0" -v b="$w1" \
  'BEGIN { printf "%.1f", 100 * d / hz / (b - a) }')

for round in $(seq 1 "$ROUNDS"); do
  start=$(date +%s.%N)
  RUST_LOG="${CLIENT_LOG:-warn,libp2p_mdns=info}" timeout 120 ip netns exec "$P-c" "$BIN" nodes --json --secret S --discover-timeout "$DISCOVER" \
    >"$W/client.out" 2>"$W/client.err" || true
  end=$(date +%s.%N)
  found=$(grep -c '^{' "$W/client.out" || true)
  # Nodes the client heard of by mDNS (libp2p_mdns logs each new record at info).
  heard=$(grep 'discovered peer on address' "$W/client.err" | grep -o 'peer=[^ ]*' | sort -u | grep -c . || true)
  client_s=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
  echo "{\"n\":$N,\"round\":$round,\"mdns_heard\":$heard,\"found\":$found,\"client_s\":$client_s,\"nodes_idle_cpu_pct\":$idle_pct,\"lan_mcast_pps\":$mcast_pps}"
done
