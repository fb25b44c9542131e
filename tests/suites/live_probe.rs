//! `meshctl check`'s live probe through real proxies and the real control
//! plane: `POST /check/probe` on a source proxy's admin port makes one mTLS
//! connection to the target's proxy, which answers with its authorization
//! decision for the source's identity; the app behind it never sees it.

#![allow(clippy::unwrap_used)]

use mesh_kube::check::rules::{ProbeReport, live_probe};
use mesh_proxy::Proxy;
use mesh_tests::apps;
use mesh_tests::mesh::{self, Mesh};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

/// POSTs to a proxy's admin port; (status, body).
async fn post(p: &Proxy, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", p.admin_addr());
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-m", "20", "-X", "POST", "-w", "\n%{http_code}", &url])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.parse().unwrap_or(0), body.to_string())
}

/// Probes until the rate limit lets one through (waiting out the last
/// probe's second), returning the report as `meshctl check` reads it.
async fn probe(p: &Proxy, target: &str) -> ProbeReport {
    for _ in 0..40 {
        let (code, body) = post(p, &format!("/check/probe?target={target}")).await;
        match code {
            200 => return serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
            429 => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => panic!("probe answered {code}: {body}"),
        }
    }
    panic!("the probe was rate limited for 4 s");
}

/// Allowed and denied sources each get the target proxy's own decision
/// over mTLS with the target's identity, the app counts no request, and a
/// second probe within the second gets 429. Catches: a probe sent in
/// plaintext or to another identity than discovery's (`live_probe` fails
/// on the report), a target that forwards the probe to the app (the app
/// counts it) or answers without its policy (the denied source would be
/// reported allowed), a missing rate limit, and a report whose fields no
/// longer match `mesh_kube`'s `ProbeReport` (deserialising fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reports_mtls_and_the_targets_decision_and_never_reaches_the_app() {
    let mesh = Mesh::start_secure(&[], HOUR).await;
    let app = apps::http("books-0").await;
    let books = mesh.sidecar("books-0", "books", app.addr).await;
    let inbound = books.inbound_addr().unwrap();
    mesh.write_registry_text(&format!(
        "services:
  - name: books
    ports:
      - port: 80
        protocol: http
    endpoints:
      - address: \"{inbound}\"
authorizations:
  - name: books-authz
    service: books
    default: deny
    rules:
      - name: web
        identities: [spiffe://mesh.test/ns/default/sa/web]
"
    ));
    let web = mesh.client("web", "web", &[]).await;
    let evil = mesh.client("evil", "evil", &[]).await;
    for p in [&books, &web, &evil] {
        mesh::wait_ready(p).await;
    }

    let allowed = probe(&web, "books.default:80").await;
    eprintln!("allowed source's report: {allowed:?}");
    assert_eq!(allowed.peer_identity.as_deref(), Some("spiffe://mesh.test/ns/default/sa/books"), "{allowed:?}");
    assert_eq!(allowed.source_identity, "spiffe://mesh.test/ns/default/sa/web");
    assert_eq!(allowed.tls_version.as_deref(), Some("TLSv1.3"));
    assert_eq!(allowed.authorized, Some(true), "{allowed:?}");
    live_probe(&allowed, true).unwrap();
    assert!(live_probe(&allowed, false).is_err());

    // Within the second: refused, and no connection is made.
    let (code, body) = post(&web, "/check/probe?target=books.default:80").await;
    assert_eq!(code, 429, "{body}");

    let denied = probe(&evil, "books.default:80").await;
    eprintln!("denied source's report: {denied:?}");
    assert_eq!(denied.peer_identity.as_deref(), Some("spiffe://mesh.test/ns/default/sa/books"), "{denied:?}");
    assert_eq!(denied.authorized, Some(false), "{denied:?}");
    live_probe(&denied, false).unwrap();
    assert_eq!(app.requests(), 0, "the app saw a probe");
    assert_eq!(app.connections(), 0, "the app was connected to");

    // Only mesh services by name: never an address, never a GET.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, body) = post(&web, &format!("/check/probe?target={}", app.addr)).await;
    assert_eq!(code, 400, "{body}");
    let get = mesh::admin_get(web.admin_addr(), "/check/probe?target=books.default:80").await;
    assert!(get.contains("use POST"), "{get}");
    // A name discovery does not know is reported, not dialled.
    let unknown = probe(&web, "nope.default:80").await;
    assert!(unknown.error.as_deref().is_some_and(|e| e.contains("knows no mesh service")), "{unknown:?}");
    assert_eq!(app.connections(), 0);
}
