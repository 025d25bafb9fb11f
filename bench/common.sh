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
