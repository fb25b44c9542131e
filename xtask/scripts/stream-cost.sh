#!/usr/bin/env bash
# What one message on a long-lived gRPC stream costs the mTLS proxy pair,
# for one mesh-proxy binary: `mesh-test-app grpc-stream-load` (bidirectional
# Echo/Bidi streams, one per connection) → client proxy → mTLS → server
# proxy → `mesh-test-app grpc-server`, as `cargo xtask bench --protocol
# grpc-stream` sets them up (one runtime thread each, loopback), but started
# here so a proxy can run under perf, strace or valgrind.
#
#   xtask/scripts/stream-cost.sh MODE BIN [TEST_APP]
#
# MODE:
#   syscalls      perf stat per proxy during RATE msg/s (default 1000) for
#                 10 s: syscalls by kind, context switches, task-clock,
#                 and utime+stime, per message (a message and its echo).
#   frames        both proxies with MESH_LOG=h2=trace at 200 msg/s for 5 s;
#                 HTTP/2 frames sent per message per proxy, by type.
#   instructions  both proxies under `valgrind --tool=callgrind
#                 --instr-atstart=no`; N messages (default 2000) at 200
#                 msg/s after a warm-up; user instructions per message.
# KEEP=DIR copies the proxies' logs (frames) or callgrind dumps
# (instructions) there.
# Compare two builds by alternating runs. Environment: RATE, STREAMS
# (default 16), N, PORTBASE (default 27300), REL (default target/release:
# meshctl and mesh-control). Needs curl; perf; valgrind for instructions.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,24p' "$0" >&2; exit 2; fi
MODE=$1
BIN=$(realpath "$2")
cd "$(dirname "$0")/../.."
APPBIN=$(realpath "${3:-target/release/mesh-test-app}")
REL=$(realpath "${REL:-target/release}")
STREAMS=${STREAMS:-16}
B=${PORTBASE:-27300}
. xtask/scripts/lib/mesh-pair.sh
APP=$(a 1)

WRAP=()
ENV=()
[ "$MODE" = instructions ] && WRAP=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$D/cg.%p")
[ "$MODE" = frames ] && ENV=(MESH_LOG=info,h2=trace)

"$APPBIN" grpc-server --listen "$APP" --name bench >"$D/app.log" 2>&1 &
pids+=($!)
mesh_pair "$APP" grpc
load() { # rate duration_s
  "$APPBIN" grpc-stream-load --target "http://$ENTRY" --streams "$STREAMS" --rate "$1" --duration "${2}s"
}
okof() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok"])' "$1"; }
load 50 2 >/dev/null

case $MODE in
  syscalls)
    R=${RATE:-1000}
    ev=task-clock,context-switches,raw_syscalls:sys_enter
    for s in writev write sendto sendmsg recvfrom read recvmsg epoll_wait epoll_pwait futex; do
      ev+=",syscalls:sys_enter_$s"
    done
    ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
    tc0=$(ticks "$CP") ts0=$(ticks "$SP")
    perf stat -x, -e "$ev" -p "$CP" -o "$D/perf.client" -- sleep 11 &
    pc=$!
    perf stat -x, -e "$ev" -p "$SP" -o "$D/perf.server" -- sleep 11 &
    ps=$!
    sleep 0.5
    load "$R" 10 >"$D/load.json"
    wait $pc $ps || true
    tc1=$(ticks "$CP") ts1=$(ticks "$SP")
    n=$(okof "$D/load.json")
    TCK=$(getconf CLK_TCK)
    echo "$n messages at $R msg/s over $STREAMS streams; per message:"
    for side in client server; do
      awk -F, -v n="$n" -v side="$side" '/^[0-9]/ { v = $1 / n; if ($3 ~ /task-clock/) printf "%s %s %.1f µs\n", side, $3, $1 / n * 1000; else if (v > 0.005) printf "%s %s %.2f\n", side, $3, v }' "$D/perf.$side"
    done
    echo "CPU (utime+stime) µs per message: client $(((tc1 - tc0) * 1000000 / TCK / n)), server $(((ts1 - ts0) * 1000000 / TCK / n))"
    ;;
  frames)
    R=${RATE:-200}
    c0=$(wc -l <"$D/client.log") s0=$(wc -l <"$D/server.log")
    load "$R" 5 >"$D/load.json"
    sleep 1
    n=$(okof "$D/load.json")
    echo "$n messages at $R msg/s over $STREAMS streams; frames sent per message:"
    for side in client server; do
      if [ $side = client ]; then from=$c0; else from=$s0; fi
      tail -n +"$((from + 1))" "$D/$side.log" | sed 's/\x1b\[[0-9;]*m//g' |
        grep -o 'send frame=[A-Za-z]*\|"send frame=[A-Za-z]*\|send.*frame=[A-Za-z]*' | grep -o 'frame=[A-Za-z]*' |
        sort | uniq -c | awk -v n="$n" -v side="$side" '{ printf "%s %s %.3f\n", side, $2, $1 / n }'
    done
    if [ -n "${KEEP:-}" ]; then cp "$D/client.log" "$D/server.log" "$KEEP/"; fi
    ;;
  instructions)
    N=${N:-2000}
    callgrind_control -i on "$SP" >/dev/null 2>&1
    callgrind_control -i on "$CP" >/dev/null 2>&1
    load 200 "$((N / 200))" >"$D/load.json"
    callgrind_control -d "$SP" >/dev/null 2>&1
    callgrind_control -d "$CP" >/dev/null 2>&1
    sleep 2
    n=$(okof "$D/load.json")
    sum() { cat "$D"/cg."$1".* | awk '/^summary:/ { s += $2 } END { print s }'; }
    echo "$n messages; user instructions per message: client proxy $(($(sum $CP) / n)), server proxy $(($(sum $SP) / n))"
    if [ -n "${KEEP:-}" ]; then cp "$D"/cg.* "$KEEP/"; fi
    ;;
  *) echo "mode: syscalls, frames or instructions, not $MODE" >&2; exit 2 ;;
esac
