//! The Grafana dashboards in `deploy/grafana/` query only metrics the mesh
//! exports: every metric name in their PromQL (panels and variables) must be
//! a sample name served on `/metrics` by a running proxy or control plane
//! (in-process, with identity; the control plane also in Kubernetes mode on
//! the real API server for its `registry_kubernetes_*` counters).
//!
//! Without the Kubernetes harness those few names are reported unchecked
//! (skipped); with `CI=true` that skip fails.

#![allow(clippy::unwrap_used)]

use mesh_tests::mesh::{self, Mesh, Svc};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------
// PromQL → metric names (pure).

/// Keywords followed by a label list in parentheses (`by (a, b)`).
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
/// Other PromQL keywords and operators spelled as words.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
/// Aggregation operators: reserved words, and `sum by (x) (…)` puts `by`
/// between the operator and its parenthesis.
const AGGREGATIONS: &[&str] = &["sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"];
/// Aggregation operators that take a parameter.
const PARAMETRIC: &[&str] = &["bottomk", "topk", "quantile", "limitk", "limit_ratio"];

/// Removes string literals and the contents of `{…}` label matchers and
/// `[…]` ranges (label names, values and durations are not metric names).
fn strip_selectors(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars();
    let mut depth = 0usize; // inside {…} or […]
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The metric names a PromQL expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let text = strip_selectors(expr);
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'$' {
            // A Grafana variable ($service, $__rate_interval).
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_digit() || c == b'.' {
            // A number (0.99, 1e3) or a duration: not a name.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            continue;
        }
        if c == b'(' && skip_group {
            // The label list after `by`/`without`/…: skip to its `)`.
            while i < bytes.len() && bytes[i] != b')' {
                i += 1;
            }
            skip_group = false;
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':') {
                i += 1;
            }
            let word = &text[start..i];
            let next = text[i..].trim_start().chars().next();
            if GROUPING.contains(&word) {
                skip_group = true;
            } else if next == Some('(')
                || [KEYWORDS, AGGREGATIONS, PARAMETRIC].iter().any(|l| l.contains(&word.to_ascii_lowercase().as_str()))
            {
                // A function or aggregation (`rate(`, `sum(`), or a keyword.
            } else {
                names.insert(word.to_string());
            }
            continue;
        }
        i += 1;
    }
    names
}

/// A Grafana query variable's PromQL: `label_values(expr, label)` reads `expr`.
fn variable_expr(query: &str) -> String {
    let q = query.trim();
    if let Some(inner) = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
        // The last comma outside {…} separates the label.
        let stripped = strip_selectors(inner);
        return match stripped.rsplit_once(',') {
            Some(_) => inner[..inner.rfind(',').unwrap_or(inner.len())].to_string(),
            None => String::new(), // label_values(label): all metrics
        };
    }
    q.strip_prefix("query_result(").and_then(|r| r.strip_suffix(')')).unwrap_or(q).to_string()
}

/// Every PromQL expression of a dashboard: panel targets' `expr` and query
/// variables' queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "expr" {
                        out.extend(v.as_str().map(str::to_string));
                    } else {
                        walk(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            let q = var["query"]["query"].as_str().or(var["query"].as_str()).unwrap_or_default();
            out.push(variable_expr(q));
        }
    }
    out
}

/// Sample names a `/metrics` page serves, from its `# TYPE` lines (so
/// families without samples yet count): counters add `_total`, histograms
/// `_bucket`, `_sum` and `_count`.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#") || parts.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => {
                names.insert(format!("{}_total", name.trim_end_matches("_total")));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The dashboards' metric names not in `exported`, as `file: name` lines.
fn unknown_names(dashboards: &[(PathBuf, Value)], exported: &BTreeSet<String>) -> Vec<String> {
    let mut unknown = Vec::new();
    for (path, dash) in dashboards {
        for expr in dashboard_exprs(dash) {
            for name in metric_names(&expr) {
                if !exported.contains(&name) {
                    unknown.push(format!("{}: {name} (in `{expr}`)", path.display()));
                }
            }
        }
    }
    unknown
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut out: Vec<(PathBuf, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v = serde_json::from_slice(&std::fs::read(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 2, "expected the services and control-plane dashboards in {}", dir.display());
    out
}

// ---------------------------------------------------------------------------
// The checks.

/// Catches a dashboard querying a metric the mesh does not export (a typo, a
/// renamed family, a counter without `_total`): that panel would be empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_query_only_metrics_the_mesh_exports() {
    let app = mesh_tests::apps::http("books-0").await;
    let mesh = Mesh::start_secure(&[Svc::new("books", 7001, "http", &[])], Duration::from_secs(3600)).await;
    let server = mesh.sidecar("books-0", "books", app.addr).await;
    mesh.write_registry(&[Svc::new("books", 7001, "http", &[server.inbound_addr().unwrap()])]);
    // The client's token is used twice: the second proxy is refused
    // (token_replayed), so the refusal counter has a sample.
    let token = mesh.identity_for("web").unwrap();
    let reused = token.clone();
    let client = mesh.client_with("web-0", "web", &["books.default:7001"], |c| c.identity = Some(token)).await;
    mesh::wait_ready(&client).await;
    let _replayed = mesh.client_with("web-1", "web", &["books.default:7001"], |c| c.identity = Some(reused)).await;
    // Traffic, so the request, response and connection families have samples
    // (families without any are not served).
    let upstream = client.upstream_addrs()[0];
    let ok =
        mesh::eventually(Duration::from_secs(10), || async { mesh::admin_get(upstream, "/").await == "books-0" }).await;
    assert!(ok, "no answer from books through the mesh");
    // Plaintext to the strict inbound is refused (tcp_refused_total).
    plaintext_attempt(server.inbound_addr().unwrap()).await;
    let inbound_refused = mesh::eventually(Duration::from_secs(10), || async {
        mesh::admin_get(server.admin_addr(), "/metrics").await.contains("tcp_refused_total{")
    })
    .await;
    assert!(inbound_refused, "plaintext to the strict inbound was not refused");
    let refused = mesh::eventually(Duration::from_secs(10), || async {
        mesh::admin_get(mesh.admin_addr(), "/metrics").await.contains("identity_certificates_refused_total{")
    })
    .await;
    assert!(refused, "the replayed token was not refused");

    let mut exported = BTreeSet::new();
    for addr in [server.admin_addr(), client.admin_addr(), mesh.admin_addr()] {
        exported.extend(exported_names(&mesh::admin_get(addr, "/metrics").await));
    }
    let kube = kubernetes_control_plane_names().await;
    let checked_kube = kube.is_some();
    exported.extend(kube.unwrap_or_default());

    let mut unknown = unknown_names(&dashboards(), &exported);
    if !checked_kube {
        unknown.retain(|u| !u.contains(": registry_kubernetes_"));
    }
    assert!(unknown.is_empty(), "dashboards query metrics nobody exports:\n{}", unknown.join("\n"));
    // The check has teeth: the core families really were seen.
    for name in ["request_total", "response_latency_seconds_bucket", "destination_propagation_seconds_bucket"] {
        assert!(exported.contains(name), "{name} not exported: {exported:?}");
    }
    drop(mesh);
}

/// Sends a plaintext HTTP request and reads until the peer closes.
async fn plaintext_attempt(addr: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: books\r\n\r\n").await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
}

/// The `registry_kubernetes_*` names, from a control plane in Kubernetes
/// mode on the real API server; `None` (skipped) without the harness.
async fn kubernetes_control_plane_names() -> Option<BTreeSet<String>> {
    use mesh_tests::kube_harness::{self, ApiServer};
    if let Err(reason) = kube_harness::availability() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: the Kubernetes part must run: {reason}");
        eprintln!("SKIPPED (registry_kubernetes_* names unchecked): {reason}");
        return None;
    }
    let api = tokio::task::spawn_blocking(ApiServer::start).await.unwrap().expect("the API server starts");
    let mut config = mesh_control::Config::with_kubernetes(Some(api.kubeconfig.clone()), None);
    config.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.admin_addr = "127.0.0.1:0".parse().unwrap();
    let control = mesh_control::Control::start(config).await.expect("the control plane starts on Kubernetes");
    let names = exported_names(&mesh::admin_get(control.admin_addr(), "/metrics").await);
    assert!(names.contains("registry_kubernetes_problems_total"), "{names:?}");
    Some(names)
}

/// Catches the name extraction missing names (then unknown metrics would
/// pass) or taking labels, functions, variables or durations for names.
#[test]
fn promql_names_are_extracted_exactly() {
    let expr = r#"histogram_quantile(0.99, sum by (target, le) (rate(response_latency_seconds_bucket{direction="outbound", target=~"$service"}[$__rate_interval])))
/ on (target) group_left sum without (le) (rate(request_total{tls="true"}[5m] offset 1h)) > bool 0.5 or vector(1)"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["request_total", "response_latency_seconds_bucket"]);
    assert_eq!(
        variable_expr(r#"label_values(request_total{direction="outbound"}, target)"#),
        r#"request_total{direction="outbound"}"#
    );
    let text = "# HELP request HTTP requests\n# TYPE request counter\nrequest_total{a=\"b\"} 1\n# TYPE response_latency_seconds histogram\n# TYPE tcp_open_connections gauge\n";
    let exported = exported_names(text);
    for n in
        ["request_total", "response_latency_seconds_bucket", "response_latency_seconds_count", "tcp_open_connections"]
    {
        assert!(exported.contains(n), "{n}: {exported:?}");
    }
}

/// Catches the check passing a misspelt metric: a dashboard querying
/// `requests_total` (the proxy exports `request_total`) is reported.
#[test]
fn a_misspelt_metric_is_reported() {
    let dash: Value = serde_json::json!({
        "panels": [{"targets": [{"expr": "sum(rate(requests_total[1m]))"}]}],
        "templating": {"list": [{"type": "query", "query": {"query": "label_values(request_total, target)"}}]},
    });
    let exported: BTreeSet<String> = ["request_total".to_string()].into();
    let unknown = unknown_names(&[(PathBuf::from("d.json"), dash)], &exported);
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(unknown[0].contains("requests_total"), "{unknown:?}");
}

/// Catches dashboards Grafana would not import cleanly: missing uid/title,
/// duplicate panel ids, a panel without queries or a data source variable.
#[test]
fn dashboards_are_well_formed() {
    let mut uids = BTreeSet::new();
    for (path, d) in dashboards() {
        let p = path.display();
        assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "{p}: uid");
        assert!(uids.insert(d["uid"].to_string()), "{p}: duplicate uid");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}: title");
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(vars.iter().any(|v| v["type"] == "datasource" && v["name"] == "datasource"), "{p}: $datasource");
        let mut ids = BTreeSet::new();
        for panel in d["panels"].as_array().unwrap() {
            assert!(ids.insert(panel["id"].as_u64().unwrap()), "{p}: duplicate panel id {}", panel["id"]);
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{p}: panel {} has no query", panel["title"]);
            assert!(targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| !metric_names(e).is_empty())));
        }
    }
}
