#!/usr/bin/env bash
# What one request costs the mTLS proxy pair, for one mesh-proxy binary:
# nginx ← server proxy ← mTLS ← client proxy ← h2load, with a control plane
# and identity as `cargo xtask bench` sets them up (one runtime thread each,
# loopback), but started here so a proxy can run under valgrind.
#
#   xtask/scripts/pair-cost.sh MODE BIN [http1|http2]
#
# MODE:
#   instructions  both proxies under `valgrind --tool=callgrind
#                 --instr-atstart=no`; warm up, `callgrind_control -i on`,
#                 N requests (default 2000) at 200 req/s over 16 connections,
#                 dump; prints user instructions per request per proxy.
#   cpu           utime+stime of both proxies per request at 1,000 req/s
#                 (open loop, 10 s) and at max rate (closed loop, 10 s).
#   rss           VmRSS/RssAnon/RssFile of both proxies idle (ready with a
#                 certificate, before any request; the binary evicted from
#                 the page cache first) and during 5,000 req/s over 50
#                 HTTP/1.1 connections.
# Compare two builds by alternating runs (A B A B ...) and reading ratios:
# the machine's load moves CPU figures ±10 %, not instruction counts.
# Environment: N (instructions), CONNS (cpu; default 16), PORTBASE (default
# 27100; nine ports from PORTBASE+1), REL (default target/release: meshctl
# and mesh-control). Needs nginx, h2load, curl; valgrind for instructions.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,26p' "$0" >&2; exit 2; fi
MODE=$1
BIN=$(realpath "$2")
PROTO=${3:-http1}
cd "$(dirname "$0")/../.."
REL=$(realpath "${REL:-target/release}")
B=${PORTBASE:-27100}
. xtask/scripts/lib/mesh-pair.sh
NG1=$(a 1) NG2=$(a 2)

case $PROTO in
  http1) APP=$NG1 REGISTRY_PROTO=http LOAD=(--h1) CURL=() ;;
  http2) APP=$NG2 REGISTRY_PROTO=http2 LOAD=() CURL=(--http2-prior-knowledge) ;;
  *) echo "protocol: http1 or http2, not $PROTO" >&2; exit 2 ;;
esac
WRAP=()
[ "$MODE" = instructions ] && WRAP=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$D/cg.%p")
[ "$MODE" = rss ] && python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$BIN"

cat >"$D/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $D/nginx.pid;
error_log $D/nginx-error.log warn; events { worker_connections 4096; }
http { access_log off; default_type text/plain; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $D/t1; proxy_temp_path $D/t2; fastcgi_temp_path $D/t3; uwsgi_temp_path $D/t4; scgi_temp_path $D/t5;
  server { listen $NG1; listen $NG2 http2; location / { return 200 "ok"; } } }
EOF
nginx -p "$D/" -e "$D/nginx-error.log" -c "$D/nginx.conf" &
pids+=($!)
mesh_pair "$APP" "$REGISTRY_PROTO"
ok() { sed -n 's/.*requests: .* \([0-9]*\) succeeded.*/\1/p' "$1"; }

case $MODE in
  instructions)
    N=${N:-2000}
    wait_ok "http://$ENTRY/" "${CURL[@]}"
    h2load "${LOAD[@]}" -c 16 -n 400 --rps=5 "http://$ENTRY/" >/dev/null
    callgrind_control -i on "$SP" >/dev/null 2>&1
    callgrind_control -i on "$CP" >/dev/null 2>&1
    h2load "${LOAD[@]}" -c 16 -n "$N" --rps=12.5 "http://$ENTRY/" >"$D/load.txt"
    callgrind_control -d "$SP" >/dev/null 2>&1
    callgrind_control -d "$CP" >/dev/null 2>&1
    sleep 2
    n=$(ok "$D/load.txt")
    sum() { cat "$D"/cg."$1".* | awk '/^summary:/ { s += $2 } END { print s }'; }
    echo "$PROTO: $n requests; user instructions per request: client proxy $(($(sum $CP) / n)), server proxy $(($(sum $SP) / n))"
    ;;
  cpu)
    C=${CONNS:-16}
    wait_ok "http://$ENTRY/" "${CURL[@]}"
    ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
    pair() { echo $(($(ticks $CP) + $(ticks $SP))); }
    TCK=$(getconf CLK_TCK)
    h2load "${LOAD[@]}" -c "$C" -D 2 "http://$ENTRY/" >/dev/null
    t0=$(pair)
    h2load "${LOAD[@]}" -c "$C" --rps="$(awk -v c="$C" 'BEGIN { print 1000 / c }')" -D 10 "http://$ENTRY/" >"$D/fixed.txt"
    t1=$(pair)
    h2load "${LOAD[@]}" -c "$C" -D 10 "http://$ENTRY/" >"$D/max.txt"
    t2=$(pair)
    n1=$(ok "$D/fixed.txt") n2=$(ok "$D/max.txt")
    echo "$PROTO, $C connections, CPU per request of the pair: $(((t1 - t0) * 1000000 / TCK / n1)) µs at 1,000 req/s ($n1 requests), $(((t2 - t1) * 1000000 / TCK / n2)) µs at max rate ($((n2 / 10)) req/s)"
    ;;
  rss)
    sleep 3
    rss() { awk '/^(VmRSS|RssAnon|RssFile):/ { printf "%s %s kB  ", $1, $2 }' "/proc/$1/status"; }
    echo "idle: client proxy $(rss $CP)"
    echo "idle: server proxy $(rss $SP)"
    h2load "${LOAD[@]}" -c 50 -n 60000 --rps=100 "http://$ENTRY/" >"$D/load.txt" &
    load=$!
    sleep 8
    echo "5,000 req/s: client proxy $(rss $CP)"
    echo "5,000 req/s: server proxy $(rss $SP)"
    wait "$load"
    echo "($(ok "$D/load.txt") requests)"
    ;;
  *) echo "mode: instructions, cpu or rss, not $MODE" >&2; exit 2 ;;
esac
