# Sourced by the benchmarks (bench/*.sh): what they share.

DATE=$(date -Is)

# emit BENCH METRIC VALUE UNIT REP: one JSON line in ../shared/bench/'s format.
emit() { printf '{"bench":"%s","metric":"%s","value":%s,"unit":"%s","rep":%s,"date":"%s"}\n' "$1" "$2" "$3" "$4" "$5" "$DATE"; }

# in_loopback_netns MARKER "$@": re-runs the calling script in a private network namespace
# with only loopback (nothing it starts can reach the LAN); MARKER, set in the environment,
# tells the second run that it is there.
in_loopback_netns() {
  local marker="$1"; shift
  [ -n "${!marker:-}" ] && return 0
  export "$marker"=1
  exec unshare -n bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
}

# workdir NAME: a temporary folder W for this run and NODE, the PID of the node it runs (if
# any); on exit the node is stopped by its PID and the folder removed.
workdir() {
  W=$(mktemp -d "/tmp/dispy-peer-$1.XXXXXX")
  NODE=""
  trap 'if [ -n "$NODE" ]; then kill "$NODE" 2>/dev/null; fi; wait 2>/dev/null; rm -rf "$W"' EXIT
}

# make_lan N MASK: a LAN of network namespaces: a bridge ($P-hub) and hosts $P-0 (the
# client) to $P-N plugged into it, host i at $(addr i)/MASK with MAC $(mac i) (the caller
# defines P, W, addr and mac). Every namespace made goes to SPACES, for the caller's
# cleanup (`printf 'netns del %s\n' "${SPACES[@]}" | ip -force -batch -`). Unless
# STATIC_ARP=0, every host knows every other's MAC (permanent neighbour entries): the
# kernel keeps one learnt-neighbour table for all namespaces, capped machine-wide, where
# machines on a real LAN each have their own.
make_lan() {
  local n=$1 mask=$2 i
  SPACES=("$P-hub"); for i in $(seq 0 "$n"); do SPACES+=("$P-$i"); done
  printf 'netns add %s\n' "${SPACES[@]}" | ip -batch -
  {
    echo "link set lo up"; echo "link add br0 type bridge"; echo "link set br0 up"
    for i in $(seq 0 "$n"); do
      echo "link add p$i type veth peer name eth0 address $(mac "$i") netns $P-$i"
      echo "link set p$i master br0"; echo "link set p$i up"
    done
  } | ip -n "$P-hub" -batch -
  : >"$W/neigh"
  if [ "${STATIC_ARP:-1}" = 1 ]; then
    {
      echo "neigh replace 224.0.0.251 lladdr 01:00:5e:00:00:fb dev eth0 nud permanent"
      for i in $(seq 0 "$n"); do echo "neigh replace $(addr "$i") lladdr $(mac "$i") dev eth0 nud permanent"; done
    } >"$W/neigh"
  fi
  for i in $(seq 0 "$n"); do
    { printf 'link set lo up\naddr add %s/%s dev eth0\nlink set eth0 up\n' "$(addr "$i")" "$mask"; cat "$W/neigh"; } |
      ip -n "$P-$i" -batch -
  done
}

# stop_pids: stops every process in PIDS by its PID: TERM, up to 10 s each, then KILL.
stop_pids() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  PIDS=()
}

# lan_cleanup: stop_pids, then deletes the namespaces in SPACES and the folder W (the
# namespace benchmarks' EXIT trap).
lan_cleanup() {
  stop_pids
  if [ "${#SPACES[@]}" -gt 0 ]; then printf 'netns del %s\n' "${SPACES[@]}" | ip -force -batch - 2>/dev/null || true; fi
  rm -rf "$W"
}
