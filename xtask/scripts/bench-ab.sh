#!/usr/bin/env bash
# A/B CPU per request of the mTLS proxy pair, interleaved: runs
# `cargo xtask bench` alternately with A's and B's bench options (one mesh
# per run, e.g. different `--proxy-arg`s), at a fixed rate and at max rate,
# for each number of client connections, and prints CPU per request of both
# proxies summed (utime+stime, from the bench's CPU ticks) with B/A ratios,
# and syscalls, context switches and task-clock per request (perf stat on
# both proxies over the whole run: fixed rate + max rate, divided by every
# request they carried; this VM has no PMU, so no instruction counts).
#
#   xtask/scripts/bench-ab.sh "--proxy-arg=--h1-over-h2=false" "" 2 "1 32 64"
#
# (that one on branch wp-h2up-mechanism: HTTP/1 between the proxies as
# HTTP/1.1 against HTTP/1 over one HTTP/2 connection.)
# Arguments: A's bench options, B's bench options ("" for none), rounds
# (default 3), connection counts (default "1 32 64"). Environment: RATE
# (default 1000), DURATION (default 10s), PROTOCOL (default http1); BIN_A and
# BIN_B, two mesh-proxy binaries to compare (copied to target/release before
# each of A's and B's runs; with the same options for both, e.g. ""). Release
# binaries must be built (the bench runs with --no-build). Stop other
# benches of this worktree first: the proxies are found by their path.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,20p' "$0" >&2; exit 2; fi
A=$1
B=$2
ROUNDS=${3:-3}
CONNS=${4:-"1 32 64"}
RATE=${RATE:-1000}
DURATION=${DURATION:-10s}
PROTOCOL=${PROTOCOL:-http1}
OUT=$(mktemp -d)
cd "$(dirname "$0")/../.."
BIN=$(pwd)/target/release/mesh-proxy

# Waits for the pair of the run to start, then counts their syscalls, context switches and CPU
# until they exit.
perf_pair() {
  local out=$1 client server
  # Long enough for a first run that installs the load generators.
  for _ in $(seq 6000); do
    client=$(pgrep -f -- "$BIN --workload bench-client" | head -1 || true)
    server=$(pgrep -f -- "$BIN --workload bench " | head -1 || true)
    [ -n "$client" ] && [ -n "$server" ] && break
    sleep 0.1
  done
  [ -n "$client" ] && [ -n "$server" ] || return 0
  perf stat -x, -e raw_syscalls:sys_enter,context-switches,task-clock -p "$client,$server" -o "$out" 2>/dev/null &
  local perf=$!
  while kill -0 "$client" 2>/dev/null && kill -0 "$server" 2>/dev/null; do sleep 0.2; done
  kill -INT "$perf" 2>/dev/null || true
  wait "$perf" || true
}

# Puts binary $1 (if given) where the bench runs the proxy from.
install_bin() {
  [ -n "$1" ] || return 0
  cp "$1" "$BIN.ab-tmp" && mv -f "$BIN.ab-tmp" "$BIN"
}

run() { # name conns opts...
  local name=$1 conns=$2; shift 2
  if [ "${name:0:1}" = a ]; then install_bin "${BIN_A:-}"; else install_bin "${BIN_B:-}"; fi
  perf_pair "$OUT/$name.perf" &
  local watcher=$!
  cargo xtask bench --no-build --no-peers --protocol "$PROTOCOL" --rate "$RATE" --connections "$conns" \
    --duration "$DURATION" --rounds 1 --warmup 0s "$@" >/dev/null 2>"$OUT/$name.log" || { tail -20 "$OUT/$name.log"; exit 1; }
  wait "$watcher" || true
}

# mesh lines of a log: "<mode> <ok> <client ticks> <server ticks>"
mesh_runs() {
  sed -n 's/.* \([0-9]* req\/s\|max rate\) via .*mTLS mesh: [^,]*, p50 [^,]*, p99 [^,]*, \([0-9]*\) ok, [0-9]* failed, CPU ticks (client proxy, server proxy, nginx) \[\([0-9]*\), \([0-9]*\), [0-9]*\].*/\1|\2|\3|\4/p' "$1"
}

for c in $CONNS; do
  for r in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    run "a-c$c-r$r" "$c" $A
    # shellcheck disable=SC2086
    run "b-c$c-r$r" "$c" $B
  done
done

TCK=$(getconf CLK_TCK)
printf '%-6s %-5s %-12s %14s %14s %14s %8s\n' conns round mode "A µs/req" "B µs/req" "B/A" ""
for c in $CONNS; do
  for r in $(seq "$ROUNDS"); do
    paste -d'|' <(mesh_runs "$OUT/a-c$c-r$r.log") <(mesh_runs "$OUT/b-c$c-r$r.log") |
      awk -F'|' -v c="$c" -v r="$r" -v t="$TCK" '{
        a = ($3 + $4) / t * 1e6 / $2; b = ($7 + $8) / t * 1e6 / $6;
        printf "%-6s %-5s %-12s %14.1f %14.1f %14.2f  (A %s ok, B %s ok)\n", c, r, $1, a, b, b / a, $2, $6 }'
    for v in a b; do
      f="$OUT/$v-c$c-r$r"
      [ -f "$f.perf" ] || { echo "$c $r $v: no perf counts (the pair was not found)"; continue; }
      ok=$(mesh_runs "$f.log" | awk -F'|' '{ s += $2 } END { print s }')
      awk -F, -v ok="$ok" -v v="$v" -v c="$c" -v r="$r" '
        /raw_syscalls:sys_enter/ { sc = $1 } /context-switches/ { cs = $1 } /task-clock/ { tc = $1 }
        END { if (ok > 0 && sc > 0) printf "%-6s %-5s %s per request (pair, perf over the whole run): %.2f syscalls, %.2f context switches, %.1f µs task-clock\n", c, r, toupper(v), sc / ok, cs / ok, tc * 1000 / ok }' "$f.perf"
    done
  done
done
echo "logs: $OUT"
