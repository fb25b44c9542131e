# Sourced by pair-cost.sh and stream-cost.sh: a control plane with identity
# and the mTLS proxy pair (client proxy → mTLS → server proxy → app) on
# loopback, as `cargo xtask bench` sets them up (one runtime thread each),
# started by hand so a proxy can run under valgrind or perf.
#
# Before sourcing, set: BIN (mesh-proxy), REL (meshctl and mesh-control),
# B (port base). It creates D (a scratch directory, removed on exit), the
# addresses GRPC CADM INB SADM ENTRY CLADM (ports B+3..B+8; B+1 and B+2 are
# the caller's), `pids` (killed on exit) and `wait_ok URL [curl options]`.
# Then `mesh_pair APP PROTOCOL` starts everything and sets SP and CP, the
# server and client proxies' pids; the arrays WRAP (a command prefix, e.g.
# valgrind) and ENV (environment of the proxies), if set, apply to both.

D=$(mktemp -d)
a() { echo "127.0.0.1:$((B + $1))"; }
GRPC=$(a 3) CADM=$(a 4) INB=$(a 5) SADM=$(a 6) ENTRY=$(a 7) CLADM=$(a 8)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT

wait_ok() { # url [curl options]
  for _ in $(seq 600); do curl -sf -o /dev/null "${@:2}" "$1" && return 0; sleep 0.5; done
  echo "no answer from $1; logs in $D" >&2
  trap - EXIT
  exit 1
}

mesh_pair() { # app-address registry-protocol
  local app=$1 proto=$2 sa
  [ -v WRAP ] || WRAP=()
  [ -v ENV ] || ENV=()
  "$REL/meshctl" identity init --dir "$D/identity" --trust-domain bench.mesh >/dev/null 2>&1
  for sa in bench client; do
    "$REL/meshctl" identity token --dir "$D/identity" --namespace default --service-account $sa --ttl 24h \
      --output "$D/$sa.token" >/dev/null 2>&1
  done
  cat >"$D/registry.yaml" <<EOR
services:
  - name: bench
    namespace: default
    serviceAccount: bench
    ports: [{port: 80, protocol: $proto}]
    endpoints: [{address: "$INB"}]
EOR
  "$REL/mesh-control" --registry-file "$D/registry.yaml" --grpc-addr "$GRPC" --admin-addr "$CADM" \
    --identity-dir "$D/identity" >"$D/control.log" 2>&1 &
  pids+=($!)
  wait_ok "http://$CADM/ready"
  local common=(--control-plane "http://$GRPC" --threads 1 --trust-anchors "$D/identity/trust-anchors.pem")
  env "${ENV[@]}" "${WRAP[@]}" "$BIN" --workload bench "${common[@]}" --admin-addr "$SADM" \
    --identity-token-file "$D/bench.token" --app "$app" --inbound-addr "$INB" >"$D/server.log" 2>&1 &
  SP=$!
  pids+=($SP)
  env "${ENV[@]}" "${WRAP[@]}" "$BIN" --workload bench-client "${common[@]}" --admin-addr "$CLADM" \
    --identity-token-file "$D/client.token" --upstream "$ENTRY=bench.default:80" >"$D/client.log" 2>&1 &
  CP=$!
  pids+=($CP)
  wait_ok "http://$SADM/ready"
  wait_ok "http://$CLADM/ready"
}
