//! The real Kubernetes API server the Kubernetes suites stand on
//! (`tests/kube-harness`): kube-apiserver v1.37 with etcd embedded, RBAC on,
//! and kube-controller-manager. Proves what later suites rely on: it serves
//! the version we build against, enforces authentication, runs the
//! controllers (a new namespace gets its `default` ServiceAccount), and mints
//! and reviews projected ServiceAccount tokens for the mesh's audience.
//!
//! Without the harness binary (no Go) the suite reports itself skipped with
//! the reason; with `CI=true` a skip fails.

use mesh_tests::kube_harness::{self, ApiServer};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// `curl` against the API server as the harness's admin (client certificate).
fn kube(api: &ApiServer, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let url = format!("{}{path}", api.url);
    let ca = api.ca_cert();
    let (cert, key) = (api.admin_cert(), api.admin_key());
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "-m".into(),
        "20".into(),
        "-X".into(),
        method.into(),
        "--cacert".into(),
        ca.display().to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(b) = body {
        args.extend(["-H".into(), "content-type: application/json".into(), "-d".into(), b.to_string()]);
    }
    args.push(url);
    let out = std::process::Command::new("curl").args(&args).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn review(api: &ApiServer, token: &str, audience: &str) -> Value {
    let req = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]}
    });
    let (code, body) = kube(api, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", Some(&req));
    assert_eq!(code, 201, "TokenReview: {body}");
    body["status"].clone()
}

#[test]
fn a_real_api_server_with_controllers_and_service_account_tokens() {
    let Some(api) = kube_harness::start_or_skip() else { return };
    let _controllers = api.start_controller_manager().expect("the controller-manager starts");

    let (code, version) = kube(&api, "GET", "/version", None);
    assert_eq!(code, 200);
    assert!(version["gitVersion"].as_str().is_some_and(|v| v.starts_with("v1.37.")), "{version}");

    // Anonymous requests are not admins: RBAC and authentication are on.
    let anonymous = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(api.ca_cert())
        .arg(format!("{}/api/v1/namespaces", api.url))
        .output()
        .expect("curl runs");
    let anonymous = String::from_utf8_lossy(&anonymous.stdout).into_owned();
    assert!(anonymous == "401" || anonymous == "403", "anonymous list: {anonymous}");

    // The controllers run: a new namespace gets its default ServiceAccount.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}});
    assert_eq!(kube(&api, "POST", "/api/v1/namespaces", Some(&ns)).0, 201);
    let started = Instant::now();
    while kube(&api, "GET", "/api/v1/namespaces/shop/serviceaccounts/default", None).0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "no default ServiceAccount in shop after 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    // TokenRequest with the mesh's audience, then TokenReview.
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": ["mesh"], "expirationSeconds": 600}
    });
    let (code, minted) = kube(&api, "POST", "/api/v1/namespaces/shop/serviceaccounts/default/token", Some(&request));
    assert_eq!(code, 201, "TokenRequest: {minted}");
    let token = minted["status"]["token"].as_str().expect("a token");
    let ok = review(&api, token, "mesh");
    assert_eq!(ok["authenticated"], true, "{ok}");
    assert_eq!(ok["user"]["username"], "system:serviceaccount:shop:default", "{ok}");
    let wrong = review(&api, token, "some-other-audience");
    assert_ne!(wrong["authenticated"], true, "a token for another audience must not pass: {wrong}");
}
