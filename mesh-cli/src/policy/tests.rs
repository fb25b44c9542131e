//! Unit tests of `meshctl policy explain`: registries in temporary files,
//! flags parsed as on the command line, explanations checked field by field.

#![allow(clippy::unwrap_used)]

use super::explain::{Explanation, Request};
use super::{ExplainArgs, explain_command, render};
use clap::Parser;
use std::io::Write as _;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: ExplainArgs,
}

const REGISTRY: &str = "\
services:
  - name: web
    ports: [{port: 80, protocol: http}]
    trafficPolicy:
      circuitBreaker: {consecutiveFailures: 5, baseEjection: 2s, maxEjection: 1m}
      limits: {maxConcurrentRequests: 100, maxPendingRequests: 10}
      retryBudget: {ratio: 0.25, minPerSecond: 5, ttl: 4s}
    endpoints:
      - address: \"127.0.0.1:4243\"
      - address: \"127.0.0.1:4244\"
  - name: web-v2
    serviceAccount: web-v2
    ports: [{port: 80, protocol: http}]
    endpoints:
      - address: \"127.0.0.1:4245\"
  - name: db
    ports: [{port: 5432, protocol: opaque}]
    endpoints: [{address: \"127.0.0.1:4250\"}]
routes:
  - name: web-routes
    service: web
    rules:
      - name: canary
        matches: [{headers: [{name: X-Canary, exact: \"1\"}]}]
        backends: [{service: web-v2, weight: 1}]
      - name: api
        matches: [{path: {prefix: /api}, method: POST}, {path: {prefix: /v2}}]
        backends: [{service: web, weight: 90}, {service: web-v2, weight: 10}]
        timeout: 2s
        retries: {attempts: 3, on: [5xx, unavailable], backoff: {base: 10ms, max: 1s}, perTryTimeout: 500ms, bufferLimit: 1024}
        faults: {abort: {percent: 10, httpStatus: 503}, delay: {percent: 5.5, duration: 100ms}}
        rateLimit: {requestsPerSecond: 50, burst: 10}
      - name: thirds
        matches: [{path: {exact: /thirds}}]
        backends: [{service: web, weight: 1}, {service: web-v2, weight: 1}, {service: web-v2, port: 80, weight: 1}]
      - name: hosted
        matches: [{host: books.example}]
authorizations:
  - name: web-authz
    service: web
    default: deny
    rules:
      - name: frontend
        serviceAccounts: [frontend]
      - name: ops-admin
        namespaces: [ops]
        http: [{path: {prefix: /admin}}]
      - name: lan
        networks: [10.1.0.0/16]
  - name: v2-authz
    service: web-v2
    default: authenticated
    requireMtls: true
    rules: []
  - name: db-authz
    service: db
    default: deny
    rules:
      - name: http-only
        namespaces: [default]
        http: [{path: {prefix: /}}]
";

fn registry(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn args(reg: &tempfile::NamedTempFile, extra: &[&str]) -> ExplainArgs {
    let path = reg.path().to_str().unwrap();
    let mut argv = vec!["explain", "--registry", path];
    argv.extend(extra);
    Cli::try_parse_from(argv).unwrap().args
}

fn explain(reg: &tempfile::NamedTempFile, extra: &[&str]) -> Explanation {
    explain_command(&args(reg, extra)).unwrap()
}

fn error(reg: &tempfile::NamedTempFile, extra: &[&str]) -> String {
    format!("{:#}", explain_command(&args(reg, extra)).unwrap_err())
}

const FRONTEND: &str = "spiffe://mesh.test/ns/default/sa/frontend";

fn backends(e: &Explanation) -> Vec<(String, f64)> {
    e.outbound.backends.iter().map(|b| (b.target.clone(), b.percent)).collect()
}

fn verdicts(e: &Explanation) -> Vec<(String, bool, String, String)> {
    e.authorization
        .iter()
        .map(|a| {
            let v = a.verdict.as_ref().unwrap();
            (a.backend.clone(), v.allowed, v.policy.clone(), v.rule.clone())
        })
        .collect()
}

#[test]
fn header_route_goes_to_v2_and_v2_judges() {
    let reg = registry(REGISTRY);
    let e = explain(&reg, &["--to", "web.default:80", "--from", FRONTEND, "-H", "x-canary: 1"]);
    let route = e.outbound.route.as_ref().unwrap();
    assert_eq!(route.name, "web-routes/canary");
    assert_eq!(route.why.match_index, Some(0));
    assert_eq!(route.why.description, "header x-canary: \"1\"");
    assert_eq!(backends(&e), [("web-v2.default:80".to_string(), 100.0)]);
    // web-v2's own policy: any authenticated client.
    assert_eq!(verdicts(&e), [("web-v2.default:80".into(), true, "v2-authz".into(), "default:authenticated".into())]);
    let a = &e.authorization[0];
    assert_eq!(
        (a.namespace.as_deref(), a.service_account.as_deref(), a.ports.as_slice()),
        (Some("default"), Some("web-v2"), &[4245][..])
    );
    assert!(a.require_mtls);
}

#[test]
fn path_route_with_everything_and_a_split() {
    let reg = registry(REGISTRY);
    let e = explain(&reg, &["--to", "web.default:80", "--from", FRONTEND, "--path", "/v2/books?x=1"]);
    let o = &e.outbound;
    let route = o.route.as_ref().unwrap();
    assert_eq!((route.name.as_str(), route.why.match_index), ("web-routes/api", Some(1)));
    assert_eq!(route.why.description, "path prefix /v2");
    assert_eq!(
        o.routes.iter().map(|r| (r.name.as_str(), r.matched)).collect::<Vec<_>>(),
        [("web-routes/canary", false), ("web-routes/api", true)]
    );
    assert_eq!(backends(&e), [("web.default:80".to_string(), 90.0), ("web-v2.default:80".to_string(), 10.0)]);
    assert_eq!(o.timeout_ms, Some(2000));
    let r = o.retry.as_ref().unwrap();
    assert_eq!((r.max_retries, r.on.clone()), (3, vec!["5xx".to_string(), "unavailable".to_string()]));
    assert_eq!(
        (r.backoff_base_ms, r.backoff_max_ms, r.per_try_timeout_ms, r.buffer_limit_bytes),
        (10, 1000, Some(500), 1024)
    );
    let f = o.fault.as_ref().unwrap();
    assert_eq!((f.abort_percent, f.abort_http_status, f.delay_percent, f.delay_ms), (10.0, 503, 5.5, 100));
    let l = o.rate_limit.as_ref().unwrap();
    assert_eq!((l.requests_per_second, l.burst), (50.0, 10));
    assert_eq!(
        (o.retry_budget.retry_ratio, o.retry_budget.min_retries_per_second, o.retry_budget.ttl_ms),
        (0.25, 5, 4000)
    );
    let c = &o.circuit_breaker;
    assert_eq!((c.enabled, c.consecutive_failures, c.base_ejection_ms, c.max_ejection_ms), (true, 5, 2000, 60_000));
    assert_eq!((o.limits.max_concurrent_requests, o.limits.max_pending_requests), (100, 10));
    // Each backend's workloads judge: web's policy by service account, v2's by mTLS.
    assert_eq!(
        verdicts(&e),
        [
            ("web.default:80".into(), true, "web-authz".into(), "frontend".into()),
            ("web-v2.default:80".into(), true, "v2-authz".into(), "default:authenticated".into()),
        ]
    );
    assert_eq!(e.authorization[0].ports, [4243, 4244]);
    // The method matters for the first match only.
    let e = explain(&reg, &["--to", "web.default:80", "--method", "POST", "--path", "/api/x"]);
    assert_eq!(e.outbound.route.as_ref().unwrap().why.match_index, Some(0));
    let e = explain(&reg, &["--to", "web.default:80", "--path", "/api/x"]);
    assert!(e.outbound.route.is_none(), "GET /api matches no route");
}

#[test]
fn no_route_is_default_behaviour_and_denials_name_the_default() {
    let reg = registry(REGISTRY);
    let evil = "spiffe://mesh.test/ns/default/sa/evil";
    let e = explain(&reg, &["--to", "web.default:80", "--from", evil, "--path", "/other"]);
    assert!(e.outbound.route.is_none());
    assert_eq!(e.outbound.routes.len(), 4);
    assert!(e.outbound.routes.iter().all(|r| !r.matched));
    assert_eq!(backends(&e), [("web.default:80".to_string(), 100.0)]);
    assert!(e.outbound.backends[0].is_target);
    assert!(e.outbound.timeout_ms.is_none() && e.outbound.retry.is_none() && e.outbound.fault.is_none());
    assert_eq!(verdicts(&e), [("web.default:80".into(), false, "web-authz".into(), "default:deny".into())]);
    let text = render::human(&e);
    assert!(text.contains("none matched: default behaviour"), "{text}");
    assert!(text.contains("DENIED by web-authz (default:deny)"), "{text}");

    // Namespace-wide, for the HTTP requests the rule names only.
    let ops = "spiffe://mesh.test/ns/ops/sa/dashboard";
    let e = explain(&reg, &["--to", "web.default:80", "--from", ops, "--path", "/admin/x"]);
    assert_eq!(verdicts(&e)[0].3, "ops-admin");
    let e = explain(&reg, &["--to", "web.default:80", "--from", ops, "--path", "/"]);
    assert!(!verdicts(&e)[0].1);
}

#[test]
fn splits_and_hosts() {
    let reg = registry(REGISTRY);
    let e = explain(&reg, &["--to", "web.default:80", "--path", "/thirds"]);
    assert_eq!(
        backends(&e),
        [
            ("web.default:80".to_string(), 33.33),
            ("web-v2.default:80".to_string(), 33.33),
            ("web-v2.default:80".to_string(), 33.33)
        ]
    );
    // Judged once per backend, even when it appears twice; no client: no verdict.
    assert_eq!(e.authorization.len(), 2);
    assert!(e.authorization.iter().all(|a| a.verdict.is_none()));
    // The authority defaults to the target; a host match sees --authority or -H host.
    let e = explain(&reg, &["--to", "web.default:80"]);
    assert_eq!(e.request.authority, "web.default:80");
    assert!(e.outbound.route.is_none());
    for flags in [["--authority", "Books.Example:8080"], ["-H", "host: books.example"]] {
        let mut all = vec!["--to", "web.default:80"];
        all.extend(flags);
        let e = explain(&reg, &all);
        assert_eq!(e.outbound.route.as_ref().map(|r| r.name.as_str()), Some("web-routes/hosted"), "{flags:?}");
        assert_eq!(e.outbound.route.as_ref().unwrap().why.description, "host books.example");
    }
}

#[test]
fn hop_by_hop_headers_are_removed_as_the_proxy_removes_them() {
    let reg = registry(REGISTRY);
    // `Connection: x-canary` makes x-canary hop-by-hop: the proxy drops it before routing.
    let e = explain(&reg, &["--to", "web.default:80", "-H", "x-canary: 1", "-H", "connection: x-canary"]);
    assert!(e.outbound.route.is_none());
    assert!(e.request.headers.is_empty(), "{:?}", e.request.headers);
    let req = Request::parse("GET", "/", None, &["x-canary:1".to_string()], "web.default:80").unwrap();
    assert_eq!(req.parts().unwrap().headers.get("x-canary").unwrap(), "1");
}

#[test]
fn unauthenticated_clients_networks_and_strict_ports() {
    let reg = registry(REGISTRY);
    let e = explain(&reg, &["--to", "web.default:80", "--from-unauthenticated", "10.1.2.3"]);
    assert_eq!(verdicts(&e)[0].3, "lan");
    assert!(e.authorization[0].notes.iter().any(|n| n.contains("permissive")), "{:?}", e.authorization);
    let e = explain(&reg, &["--to", "web.default:80", "--from-unauthenticated", "10.2.0.1"]);
    assert_eq!(verdicts(&e)[0].3, "default:deny");
    // requireMtls decides before any rule.
    let e = explain(&reg, &["--to", "web.default:80", "--from-unauthenticated", "10.1.2.3", "-H", "x-canary: 1"]);
    assert_eq!(verdicts(&e), [("web-v2.default:80".into(), false, "v2-authz".into(), "require-mtls".into())]);
    assert!(e.authorization[0].notes.is_empty());
    // Networks also admit authenticated clients from them.
    let e =
        explain(&reg, &["--to", "web.default:80", "--from", "spiffe://mesh.test/ns/x/sa/y", "--from-ip", "10.1.0.9"]);
    assert_eq!(verdicts(&e)[0].3, "lan");
}

#[test]
fn service_accounts_need_a_trust_domain() {
    let reg = registry(REGISTRY);
    // Taken from --from: the rule's service account expands in mesh.test.
    let e = explain(&reg, &["--to", "web.default:80", "--from", FRONTEND]);
    assert_eq!(verdicts(&e)[0].3, "frontend");
    assert!(e.notes.is_empty());
    // Another trust domain: the client is not spiffe://other/ns/default/sa/frontend.
    let e = explain(&reg, &["--to", "web.default:80", "--from", FRONTEND, "--trust-domain", "other.test"]);
    assert_eq!(verdicts(&e)[0].3, "default:deny");
    // From an identity directory's trust-domain file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trust-domain"), "mesh.test\n").unwrap();
    let d = dir.path().to_str().unwrap();
    let e = explain(&reg, &["--to", "web.default:80", "--identity-dir", d, "--from-unauthenticated", "10.2.0.1"]);
    assert!(e.notes.is_empty(), "{:?}", e.notes);
    // None at all: said so.
    let e = explain(&reg, &["--to", "web.default:80", "--from-unauthenticated", "10.2.0.1"]);
    assert!(e.notes.iter().any(|n| n.contains("no trust domain")), "{:?}", e.notes);
    assert!(
        error(&reg, &["--to", "web.default:80", "--trust-domain", "Not A Domain"]).contains("invalid trust domain")
    );
}

#[test]
fn opaque_ports_are_not_routed_and_http_rules_do_not_apply() {
    let reg = registry(REGISTRY);
    let e = explain(&reg, &["--to", "db.default:5432", "--from", FRONTEND, "--path", "/v2"]);
    assert!(!e.outbound.http);
    assert!(e.outbound.route.is_none() && e.outbound.routes.is_empty());
    assert_eq!(verdicts(&e), [("db.default:5432".into(), false, "db-authz".into(), "default:deny".into())]);
    assert!(e.authorization[0].notes.iter().any(|n| n.contains("opaque TCP")));
    assert!(render::human(&e).contains("opaque TCP port is not routed"));
}

#[test]
fn targets_by_address_and_given_workloads() {
    let reg = registry(REGISTRY);
    // One endpoint's own address: that replica only.
    let e = explain(&reg, &["--to", "127.0.0.1:4244", "--from", FRONTEND, "--path", "/x"]);
    assert_eq!(e.outbound.service, "web.default:80");
    assert_eq!(e.authorization[0].ports, [4244]);
    // --to-* flags judge at the given workload port.
    let e = explain(
        &reg,
        &["--to", "web.default:80", "--from", FRONTEND, "--to-service-account", "web-v2", "--to-port", "4245"],
    );
    assert_eq!(verdicts(&e)[0].2, "v2-authz");
    assert_eq!(e.authorization[0].namespace.as_deref(), Some("default"));
    assert!(Cli::try_parse_from(["explain", "--registry", "r", "--to", "web:80", "--to-port", "1"]).is_err());
}

#[test]
fn clear_errors() {
    let reg = registry(REGISTRY);
    let err = error(&reg, &["--to", "books.default:80"]);
    assert!(err.contains("unknown target books.default:80"), "{err}");
    assert!(err.contains("db.default:5432, web-v2.default:80, web.default:80"), "{err}");
    assert!(error(&reg, &["--to", "web"]).contains("invalid target"));
    assert!(error(&reg, &["--to", "web.default:80", "-H", "novalue"]).contains("expected 'name: value'"));
    assert!(error(&reg, &["--to", "web.default:80", "--path", "api"]).contains("must start with '/'"));
    assert!(error(&reg, &["--to", "web.default:80", "--method", "G E T"]).contains("invalid --method"));
    assert!(error(&reg, &["--to", "web.default:80", "--from", "web"]).contains("invalid --from"));

    let bad = registry("services:\n  - name: Web\n    ports: [{port: 0}]\n");
    let err = error(&bad, &["--to", "web.default:80"]);
    let path = bad.path().display().to_string();
    assert!(
        err.contains(&format!("{path}:2:")) && err.contains(&format!("{path}:3:")),
        "every problem, with lines: {err}"
    );
    let missing =
        Cli::try_parse_from(["explain", "--registry", "/nonexistent/registry.yaml", "--to", "web:80"]).unwrap().args;
    assert!(format!("{:#}", explain_command(&missing).unwrap_err()).contains("cannot read registry file"));

    let live =
        |url: &str| Cli::try_parse_from(["explain", "--control-plane", url, "--to", "web.default:80"]).unwrap().args;
    let err = format!("{:#}", explain_command(&live("http://127.0.0.1:1")).unwrap_err());
    assert!(err.contains("cannot reach the control plane at http://127.0.0.1:1"), "{err}");
    let err = format!("{:#}", explain_command(&live("https://127.0.0.1:1")).unwrap_err());
    assert!(err.contains("--trust-anchors"), "{err}");
}

#[test]
fn live_answers_match_the_file() {
    let reg = registry(REGISTRY);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut config = mesh_control::Config::with_file(reg.path());
    config.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.admin_addr = "127.0.0.1:0".parse().unwrap();
    let control = rt.block_on(mesh_control::Control::start(config)).unwrap();
    let url = format!("http://{}", control.grpc_addr());
    let rows: [&[&str]; 4] = [
        &["--from", FRONTEND, "-H", "x-canary: 1"],
        &["--from", FRONTEND, "--path", "/v2/x"],
        &["--from", "spiffe://mesh.test/ns/default/sa/evil", "--path", "/v1"],
        &["--from-unauthenticated", "10.1.0.1", "--path", "/thirds"],
    ];
    for row in rows {
        let mut file_args = vec!["--to", "web.default:80", "--trust-domain", "mesh.test"];
        file_args.extend(row);
        let from_file = explain(&reg, &file_args);
        let mut argv = vec!["explain", "--control-plane", &url, "--to", "web.default:80"];
        argv.extend(row);
        let live = explain_command(&Cli::try_parse_from(argv).unwrap().args).unwrap();
        // A control plane without identity names no service accounts: compare what does not depend on them.
        assert_eq!(
            serde_json::to_value(&live.outbound).unwrap(),
            serde_json::to_value(&from_file.outbound).unwrap(),
            "{row:?}"
        );
        let judged = |e: &Explanation| e.authorization.iter().map(|a| a.backend.clone()).collect::<Vec<_>>();
        assert_eq!(judged(&live), judged(&from_file), "{row:?}");
        // Without identity, endpoints carry none: the control plane says so.
        assert!(
            live.authorization
                .iter()
                .all(|a| a.policy.is_none() && a.notes.iter().any(|n| n.contains("no mesh identity")))
        );
    }
    let unknown = Cli::try_parse_from(["explain", "--control-plane", &url, "--to", "books.default:80"]).unwrap().args;
    let err = format!("{:#}", explain_command(&unknown).unwrap_err());
    assert!(err.contains("unknown target books.default:80: the control plane at"), "{err}");
    rt.block_on(control.shutdown());
}

#[test]
fn human_durations_and_output() {
    assert_eq!(render::duration(250), "250ms");
    assert_eq!(render::duration(2000), "2s");
    assert_eq!(render::duration(1500), "1.5s");
    assert_eq!(render::duration(300_000), "5m");
    assert_eq!(render::duration(90_000), "1m30s");
    assert_eq!(render::duration(5_400_000), "1h30m");
    let reg = registry(REGISTRY);
    let e = explain(&reg, &["--to", "web.default:80", "--from", FRONTEND, "--path", "/v2"]);
    let text = render::human(&e);
    for want in [
        "route           web-routes/api",
        "match #2: path prefix /v2",
        "90%  web.default:80  (weight 90)",
        "10%  web-v2.default:80  (weight 10)",
        "timeout         2s",
        "up to 3 on 5xx, unavailable; backoff 10ms..1s; per try 500ms; bodies up to 1 KiB replayed",
        "retry budget    25% of requests + 5/s, over 4s",
        "abort 10% with 503; delay 5.5% by 100ms",
        "50/s per calling proxy, burst 10",
        "after 5 consecutive failures, for 2s doubling up to 1m",
        "concurrent 100, pending 10, connections per endpoint unlimited",
        "ALLOWED by web-authz, rule frontend",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
