#!/usr/bin/env bash
# Our mTLS proxy pair against the floor (two `mesh-test-app relay`s with
# TLS 1.3 between them, no HTTP parsing), per HTTP/1.1 request, on the
# bench's topology: load → client → server → nginx, one thread each, the
# bench's identity (meshctl identity init; the relays' leaves from its
# issuer, SPIFFE IDs checked).
#
#   xtask/scripts/floor-profile.sh callgrind   # user instructions per request, by family
#   xtask/scripts/floor-profile.sh perf        # syscalls, context switches, task-clock per request
#
# callgrind: every process under `valgrind --tool=callgrind
# --instr-atstart=no`; after a warm-up, instrumentation on, N then 2N
# requests (default 2000, 16 new connections each, 200 req/s), a dump after
# each; prints the marginal instructions per request (2N − N: without the
# per-connection costs, such as the relays' handshakes) per process, self
# cost grouped by crate/function family (xtask/scripts/cg-families.py). perf: native processes, N requests
# (default 20000) at RATE (default 1000 req/s) over CONNS (default 16)
# connections, `perf stat` on each pair. Release binaries must be built
# (cargo build --release --bins). Leaves its files in $OUT (printed).
set -euo pipefail
MODE=${1:-callgrind}
cd "$(dirname "$0")/../.."
R=$(pwd)/target/release
CONNS=${CONNS:-16}
if [ "$MODE" = callgrind ]; then N=${N:-2000}; RATE=${RATE:-200}; else N=${N:-20000}; RATE=${RATE:-1000}; fi
OUT=${OUT:-$(mktemp -d /tmp/floor-profile.XXXXXX)}
echo "files in $OUT" >&2
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { # url what
  for _ in $(seq 600); do curl -fsS -m 2 "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out waiting for $2 ($1)" >&2; exit 1
}
wrap() { # name: the command prefix for a measured process
  if [ "$MODE" = callgrind ]; then
    echo "valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$OUT/cg.$1 --log-file=$OUT/vg.$1.log"
  fi
}
start() { # name cmd...
  local name=$1; shift
  "$@" >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_${name//-/_}=$!"
}

NGINX=$(port); GRPC=$(port); CADMIN=$(port); INBOUND=$(port); SADMIN=$(port); ENTRY=$(port); CLADMIN=$(port)
RIN=$(port); RENTRY=$(port)
mkdir -p "$OUT/nginx"
cat >"$OUT/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $OUT/nginx.pid; error_log $OUT/nginx-error.log warn;
events { worker_connections 4096; }
http { access_log off; default_type text/plain; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $OUT/nginx; proxy_temp_path $OUT/nginx; fastcgi_temp_path $OUT/nginx;
  uwsgi_temp_path $OUT/nginx; scgi_temp_path $OUT/nginx;
  server { listen 127.0.0.1:$NGINX; location / { return 200 "ok"; } } }
EOF
start nginx nginx -p "$OUT/" -e "$OUT/nginx-error.log" -c "$OUT/nginx.conf"
wait_ok "http://127.0.0.1:$NGINX/" nginx

ID=$OUT/identity
"$R/meshctl" identity init --dir "$ID" --trust-domain bench.mesh >/dev/null
for sa in bench client; do
  "$R/meshctl" identity token --dir "$ID" --namespace default --service-account $sa --ttl 1h --output "$OUT/$sa.token" >/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$OUT/$sa.key" -subj "/CN=$sa" \
    -out "$OUT/$sa.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=critical,URI:spiffe://bench.mesh/ns/default/sa/%s\n' $sa >"$OUT/$sa.ext"
  openssl x509 -req -in "$OUT/$sa.csr" -CA "$ID/issuer.crt" -CAkey "$ID/issuer.key" -set_serial "0x$RANDOM$RANDOM" \
    -days 1 -extfile "$OUT/$sa.ext" -out "$OUT/$sa.crt" 2>/dev/null
  cat "$OUT/$sa.crt" "$ID/issuer.crt" >"$OUT/$sa.chain.pem"
done
ANCHORS=$ID/trust-anchors.pem
[ -f "$ANCHORS" ] || ANCHORS=$(ls "$ID"/*anchor*.pem | head -1)
cat >"$OUT/registry.yaml" <<EOF
services:
  - name: bench
    serviceAccount: bench
    ports: [{port: 80, protocol: http}]
    endpoints: [{address: "127.0.0.1:$INBOUND"}]
EOF
start control "$R/mesh-control" --registry-file "$OUT/registry.yaml" --grpc-addr "127.0.0.1:$GRPC" \
  --admin-addr "127.0.0.1:$CADMIN" --identity-dir "$ID"
wait_ok "http://127.0.0.1:$CADMIN/ready" mesh-control
common=(--control-plane "http://127.0.0.1:$GRPC" --threads 1 --trust-anchors "$ANCHORS")
# shellcheck disable=SC2046
start server $(wrap server) "$R/mesh-proxy" --workload bench --admin-addr "127.0.0.1:$SADMIN" "${common[@]}" \
  --identity-token-file "$OUT/bench.token" --app "127.0.0.1:$NGINX" --inbound-addr "127.0.0.1:$INBOUND"
# shellcheck disable=SC2046
start client $(wrap client) "$R/mesh-proxy" --workload bench-client --admin-addr "127.0.0.1:$CLADMIN" "${common[@]}" \
  --identity-token-file "$OUT/client.token" --upstream "127.0.0.1:$ENTRY=bench.default:80"
relay() { # name side listen to account peer
  # shellcheck disable=SC2046
  start "$1" $(wrap "$1") "$R/mesh-test-app" relay --listen "127.0.0.1:$3" --to "127.0.0.1:$4" --tls "$2" \
    --cert-chain "$OUT/$5.chain.pem" --key "$OUT/$5.key" --trust-anchors "$ANCHORS" \
    --peer-id "spiffe://bench.mesh/ns/default/sa/$6"
}
relay relay-server accept "$RIN" "$NGINX" bench client
relay relay-client connect "$RENTRY" "$RIN" client bench
wait_ok "http://127.0.0.1:$SADMIN/ready" "the server proxy"
wait_ok "http://127.0.0.1:$CLADMIN/ready" "the client proxy"
wait_ok "http://127.0.0.1:$ENTRY/" "a request through our pair"
wait_ok "http://127.0.0.1:$RENTRY/" "a request through the relay pair"

per_client=$(python3 -c "print($RATE/$CONNS)")
load() { h2load --h1 -c "$CONNS" -n "$1" --rps="$per_client" "http://127.0.0.1:$2/" | grep -E '^requests:'; }
for e in $ENTRY $RENTRY; do h2load --h1 -c "$CONNS" -n $((CONNS * 50)) "http://127.0.0.1:$e/" >/dev/null; done

ticks() { awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; } # utime stime, after the command name
delta() { # "u0 s0" "u1 s1": user / system µs per request
  python3 -c "import os; t=os.sysconf('SC_CLK_TCK'); a='$1'.split(); b='$2'.split(); \
print(' / '.join(f'{(int(y)-int(x))*1e6/t/$N:.1f}' for x, y in zip(a, b)))"
}
measure() { # label entry pid-a pid-b
  local label=$1 entry=$2 a=$3 b=$4
  if [ "$MODE" = callgrind ]; then
    # Two windows, N and 2N requests over CONNS new connections each: their
    # difference is the marginal cost of N requests (cg-families.py).
    callgrind_control -i on "$a" >/dev/null; callgrind_control -i on "$b" >/dev/null
    for n in "$N" $((2 * N)); do
      echo "$label: $(load "$n" "$entry")"
      callgrind_control -d "$a" >/dev/null; callgrind_control -d "$b" >/dev/null
    done
    callgrind_control -i off "$a" >/dev/null; callgrind_control -i off "$b" >/dev/null
  else
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,task-clock,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait \
      -p "$a" -o "$OUT/$label.$a.perf" &
    local pa=$!
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,task-clock,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait \
      -p "$b" -o "$OUT/$label.$b.perf" &
    local pb=$!
    sleep 0.5
    local before_a before_b
    before_a=$(ticks "$a"); before_b=$(ticks "$b")
    echo "$label: $(load "$N" "$entry")"
    echo "$label pid $a user/system CPU: $(delta "$before_a" "$(ticks "$a")") µs per request"
    echo "$label pid $b user/system CPU: $(delta "$before_b" "$(ticks "$b")") µs per request"
    kill -INT "$pa" "$pb"; wait "$pa" "$pb" || true
    for p in "$a" "$b"; do
      awk -F, -v n="$N" -v who="$label pid $p" '$3!="" && $1 ~ /^[0-9.]+$/ {
          v = $1; if ($3 == "task-clock") { v = v * 1000; u = " µs" } else u = ""
          printf "%s %s: %.2f%s per request\n", who, $3, v / n, u }' "$OUT/$label.$p.perf"
    done
  fi
}
# shellcheck disable=SC2154
measure ours "$ENTRY" "$PID_client" "$PID_server"
# shellcheck disable=SC2154
measure floor-tls "$RENTRY" "$PID_relay_client" "$PID_relay_server"
if [ "$MODE" = callgrind ]; then
  for name in client server relay-client relay-server; do
    read -r first second < <(ls -tr "$OUT"/cg."$name".* | tail -2 | tr '\n' ' '; echo)
    echo "== $name ($first, $second): per request"
    python3 xtask/scripts/cg-families.py "$first" "$N" "$second" $((2 * N))
  done
fi
