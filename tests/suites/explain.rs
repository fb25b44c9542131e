//! `meshctl policy explain` agrees with what the proxies did: a table of
//! requests (method, path, headers, client identity) goes through real
//! sidecars in a secure mesh with routes and authorizations, and the real
//! `meshctl` binary, from the registry file and from the live control plane,
//! predicts the backend that served each one and the verdict.

#![allow(clippy::unwrap_used)]

use mesh_proxy::Proxy;
use mesh_tests::apps;
use mesh_tests::bins;
use mesh_tests::mesh::{self, Mesh};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);
const TD: &str = "mesh.test";

fn registry(web: SocketAddr, v2: SocketAddr) -> String {
    format!(
        "services:
  - name: web
    serviceAccount: web
    ports: [{{port: 80, protocol: http}}]
    endpoints: [{{address: \"{web}\"}}]
  - name: web-v2
    serviceAccount: web-v2
    ports: [{{port: 80, protocol: http}}]
    endpoints: [{{address: \"{v2}\"}}]
routes:
  - name: web-routes
    service: web
    rules:
      - name: canary
        matches: [{{headers: [{{name: x-canary, exact: \"1\"}}]}}]
        backends: [{{service: web-v2, weight: 1}}]
      - name: v2-path
        matches: [{{path: {{prefix: /v2}}}}]
        backends: [{{service: web-v2, weight: 1}}]
      - name: default
        backends: [{{service: web, weight: 1}}]
        timeout: 10s
authorizations:
  - name: web-authz
    service: web
    default: deny
    rules:
      - name: frontend
        serviceAccounts: [frontend]
      - name: ops
        namespaces: [ops]
  - name: v2-authz
    service: web-v2
    default: deny
    rules:
      - name: frontend-reads
        identities: [spiffe://{TD}/ns/default/sa/frontend]
        http: [{{method: GET}}]
"
    )
}

/// One request of the table.
struct Row {
    client: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [&'static str],
}

const ROWS: &[Row] = &[
    Row { client: "frontend", method: "GET", path: "/", headers: &[] },
    Row { client: "frontend", method: "GET", path: "/v2/books", headers: &[] },
    Row { client: "frontend", method: "GET", path: "/", headers: &["x-canary: 1"] },
    Row { client: "frontend", method: "POST", path: "/", headers: &["x-canary: 1"] },
    Row { client: "frontend", method: "GET", path: "/v2", headers: &["x-canary: 2"] },
    Row { client: "frontend", method: "GET", path: "/v2x", headers: &["x-canary: 0"] },
    Row { client: "ops", method: "GET", path: "/headers", headers: &[] },
    Row { client: "ops", method: "GET", path: "/v2/a", headers: &[] },
    Row { client: "ops", method: "POST", path: "/", headers: &["x-canary: 1"] },
    Row { client: "evil", method: "GET", path: "/", headers: &[] },
    Row { client: "evil", method: "GET", path: "/v2/a", headers: &["x-other: 1"] },
    Row { client: "evil", method: "DELETE", path: "/x", headers: &["x-canary: 1"] },
];

fn identity(client: &str) -> String {
    let ns = if client == "ops" { "ops" } else { "default" };
    let sa = if client == "ops" { "dashboard" } else { client };
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

/// What the mesh did: status, the replica that answered, the body.
#[derive(Debug)]
struct Outcome {
    status: u16,
    replica: String,
    body: String,
}

async fn send(client: &Proxy, row: &Row) -> Outcome {
    let url = format!("http://{}{}", client.upstream_addrs()[0], row.path);
    let mut args: Vec<String> = vec!["-s".into(), "-m".into(), "10".into(), "-X".into(), row.method.into()];
    for h in row.headers {
        args.extend(["-H".to_string(), (*h).to_string()]);
    }
    args.extend(["-w".into(), "\n%{http_code} %header{x-replica}".into(), url]);
    let out = tokio::process::Command::new("curl").args(&args).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, replica) = last.split_once(' ').unwrap_or((last, ""));
    Outcome { status: code.parse().unwrap_or(0), replica: replica.to_string(), body: body.to_string() }
}

/// Runs the real `meshctl policy explain -o json` for a row.
async fn explain(config: &[String], row: &Row) -> Value {
    let mut args: Vec<String> =
        ["policy", "explain", "--to", "web.default:80", "-o", "json"].map(String::from).to_vec();
    args.extend(config.iter().cloned());
    args.extend(["--from".into(), identity(row.client), "--method".into(), row.method.into()]);
    args.extend(["--path".into(), row.path.into()]);
    for h in row.headers {
        args.extend(["-H".to_string(), (*h).to_string()]);
    }
    let out = tokio::process::Command::new(bins::path("meshctl")).args(&args).output().await.unwrap();
    assert!(
        out.status.success(),
        "meshctl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The prediction: the backend (all of the split) and the verdict there.
#[derive(Debug, PartialEq)]
struct Prediction {
    route: Option<String>,
    backend: String,
    allowed: bool,
    policy: String,
    rule: String,
}

fn prediction(e: &Value) -> Prediction {
    let backends = e["outbound"]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 1, "one backend per route in this registry: {e:#}");
    assert_eq!(backends[0]["percent"].as_f64(), Some(100.0), "{e:#}");
    let backend = backends[0]["target"].as_str().unwrap().to_string();
    let authz: Vec<&Value> =
        e["authorization"].as_array().unwrap().iter().filter(|a| a["backend"].as_str() == Some(&backend)).collect();
    assert_eq!(authz.len(), 1, "one destination workload: {e:#}");
    let v = &authz[0]["verdict"];
    Prediction {
        route: e["outbound"]["route"]["name"].as_str().map(str::to_string),
        backend,
        allowed: v["allowed"].as_bool().unwrap(),
        policy: v["policy"].as_str().unwrap().to_string(),
        rule: v["rule"].as_str().unwrap().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_predicts_the_backend_and_verdict_of_every_request() {
    let mesh = Mesh::start_secure(&[], HOUR).await;
    let v1 = apps::http("v1-0").await;
    let v2 = apps::http("v2-0").await;
    let side1 = mesh.sidecar("v1-0", "web", v1.addr).await;
    let side2 = mesh.sidecar("v2-0", "web-v2", v2.addr).await;
    mesh.write_registry_text(&registry(side1.inbound_addr().unwrap(), side2.inbound_addr().unwrap()));
    let frontend = mesh.client("c-frontend", "frontend", &["web.default:80"]).await;
    let ops = mesh.client_in("c-ops", "ops", "dashboard", &["web.default:80"]).await;
    let evil = mesh.client("c-evil", "evil", &["web.default:80"]).await;
    for p in [&side1, &side2, &frontend, &ops, &evil] {
        mesh::wait_ready(p).await;
    }
    for p in [&frontend, &ops, &evil] {
        mesh::wait_resolved(p, 1).await;
    }
    let replica_of = |backend: &str| match backend {
        "web.default:80" => "v1-0",
        "web-v2.default:80" => "v2-0",
        other => panic!("unexpected backend {other}"),
    };
    // Until both sidecars hold their inbound policy (a sidecar starts its
    // watch with the first connection) and the clients their routes.
    let settle = [&ROWS[3], &ROWS[7], &ROWS[9], &ROWS[2]];
    let settled = mesh::eventually(Duration::from_secs(10), || async {
        let mut all = true;
        for row in settle {
            let client = match row.client {
                "ops" => &ops,
                "evil" => &evil,
                _ => &frontend,
            };
            let o = send(client, row).await;
            all &= if row.client == "frontend" && row.method == "GET" { o.replica == "v2-0" } else { o.status == 403 };
        }
        all
    })
    .await;
    assert!(settled, "the policies never came into force");

    let anchors = mesh.identity_dir().unwrap().path().join(mesh_identity::dir::ANCHORS);
    let file =
        vec!["--registry".to_string(), mesh.registry_path().display().to_string(), "--trust-domain".into(), TD.into()];
    // Live: TLS to the control plane; the trust domain comes from the identity directory beside the anchors.
    let live = vec![
        "--control-plane".to_string(),
        mesh.control_url(),
        "--trust-anchors".into(),
        anchors.display().to_string(),
    ];
    let (mut allowed, mut denied, mut to_v2) = (0, 0, 0);
    for row in ROWS {
        let client = match row.client {
            "ops" => &ops,
            "evil" => &evil,
            _ => &frontend,
        };
        let what = format!("{} {} {} {:?}", row.client, row.method, row.path, row.headers);
        let predicted = prediction(&explain(&file, row).await);
        assert_eq!(prediction(&explain(&live, row).await), predicted, "{what}: live and file explanations differ");
        let got = send(client, row).await;
        if predicted.allowed {
            allowed += 1;
            assert_ne!(got.status, 403, "{what}: explain said allowed ({predicted:?}), the proxy denied: {got:?}");
            assert_eq!(got.replica, replica_of(&predicted.backend), "{what}: {predicted:?} vs {got:?}");
        } else {
            denied += 1;
            assert_eq!(
                got.status, 403,
                "{what}: explain said denied ({predicted:?}), the proxy let it through: {got:?}"
            );
            let reason = format!("denied by policy {} ({})", predicted.policy, predicted.rule);
            assert!(got.body.contains(&reason), "{what}: expected {reason:?}: {got:?}");
        }
        to_v2 += usize::from(predicted.backend == "web-v2.default:80");
    }
    // The table exercises every branch.
    assert!(allowed >= 4 && denied >= 4 && to_v2 >= 4, "allowed {allowed}, denied {denied}, to v2 {to_v2}");
}
