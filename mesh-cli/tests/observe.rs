//! End to end: `meshctl stat`, `edges`, `tap` and `top` against a real
//! `meshctl demo` (real control plane, proxies and apps on loopback). Needs
//! `mesh-proxy` and `mesh-control` built beside meshctl: run
//! `cargo build --workspace --bins` first.

use serde_json::Value;
mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{Demo, meshctl};

/// The rate the demo's traffic generator sends to web.
const RPS: f64 = 50.0;
/// `meshctl stat --window`, in seconds.
const WINDOW_SECS: f64 = 4.0;

/// Runs meshctl with `args`; fails the test unless it exits 0 in time.
fn run(args: &[&str], timeout: Duration) -> (Output, Duration) {
    let began = Instant::now();
    let child = Command::new(meshctl())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start meshctl");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("meshctl output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("meshctl {args:?} did not finish within {timeout:?}");
        }
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    assert!(
        out.status.success(),
        "meshctl {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    (out, began.elapsed())
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn row<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no row {name:?} in {doc:#}"))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[test]
fn live_views_of_the_demo() {
    let mut demo = Demo::start(&["--duration", "20s", "--rps", "50", "--interval", "5s"]);
    // The demo prints the command to try, with the control plane's admin URL.
    let hint = demo.line_with("meshctl stat --control-plane-admin ", Duration::from_secs(60));
    let url = hint
        .split_whitespace()
        .skip_while(|w| *w != "--control-plane-admin")
        .nth(1)
        .expect("a URL after --control-plane-admin")
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{hint}");
    let web0_admin = demo
        .line_with("web-0 ", Duration::from_secs(5))
        .split_whitespace()
        .last()
        .expect("web-0's admin URL")
        .to_string();
    demo.line_with("processes ready", Duration::from_secs(60));
    // Let the first connections and handshakes settle.
    std::thread::sleep(Duration::from_secs(1));
    let cp = ["--control-plane-admin", url.as_str()];

    // stat: web received what the generator sent. ±2 % of 50 req/s is ±1;
    // a 4 s window counts whole requests, so one more or less at either
    // scrape moves the rate by 1/4 req/s on top.
    let (out, _) =
        run(&[&["stat", "-o", "json", "--window", "4s", "--by", "service"], &cp[..]].concat(), Duration::from_secs(30));
    let doc = json(&out);
    assert_eq!(doc["by"], "service");
    let web = row(&doc, "web");
    let rps = web["requests_per_second"].as_f64().expect("req/s");
    let tolerance = RPS * 0.02 + 1.0 / WINDOW_SECS;
    eprintln!("stat: web received {rps} req/s over {WINDOW_SECS}s; the demo sends {RPS} (±{tolerance})");
    assert!((rps - RPS).abs() <= tolerance, "web received {rps} req/s, sent {RPS} ±{tolerance}: {doc:#}");
    for service in ["web", "books", "authors"] {
        let r = row(&doc, service);
        assert_eq!((r["proxies"].as_u64(), r["proxies_up"].as_u64()), (Some(2), Some(2)), "{r}");
        assert_eq!(r["mtls_share"].as_f64(), Some(1.0), "all of {service}'s traffic is mTLS: {r}");
        assert!(r["success_rate"].as_f64().is_some_and(|s| s > 0.9), "{r}");
        for q in ["p50_ms", "p95_ms", "p99_ms"] {
            assert!(r[q].as_f64().is_some_and(|v| v > 0.0), "{q} of {service}: {r}");
        }
        assert!(r["p50_ms"].as_f64() <= r["p95_ms"].as_f64() && r["p95_ms"].as_f64() <= r["p99_ms"].as_f64(), "{r}");
    }

    // edges: web calls books and authors over mTLS, with identities, and the
    // servers' proxies saw web's identity.
    let (out, _) = run(&[&["edges", "-o", "json"], &cp[..]].concat(), Duration::from_secs(30));
    let doc = json(&out);
    let edges = doc["edges"].as_array().expect("edges");
    let web_id = "spiffe://demo.mesh/ns/default/sa/web";
    for (service, target) in [("books", "books.default:7001"), ("authors", "authors.default:7002")] {
        let id = format!("spiffe://demo.mesh/ns/default/sa/{service}");
        let out_edges: Vec<&Value> = edges
            .iter()
            .filter(|e| e["seen_by"] == "outbound" && e["src_identity"] == web_id && e["dst_identity"] == id.as_str())
            .collect();
        assert_eq!(out_edges.len(), 2, "web-0 and web-1 call {service}: {doc:#}");
        for e in out_edges {
            assert_eq!(e["dst"], target, "{e}");
            assert_eq!(e["mtls"], true, "{e}");
            assert!(e["requests"].as_u64().is_some_and(|n| n > 0), "{e}");
        }
        let seen_by_server = edges.iter().any(|e| {
            e["seen_by"] == "inbound"
                && e["src"] == "web"
                && e["src_identity"] == web_id
                && e["dst_identity"] == id.as_str()
                && e["mtls"] == true
        });
        assert!(seen_by_server, "{service}'s proxies saw web's identity: {doc:#}");
    }
    assert!(!edges.iter().any(|e| e["mtls"] == false), "no plaintext edge in the demo: {doc:#}");

    // tap: requests as they happen.
    let tap_began = now_ms();
    let (out, took) =
        run(&[&["tap", "-o", "json", "--max", "5", "--duration", "10s"], &cp[..]].concat(), Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let events: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect();
    assert_eq!(events.len(), 5, "{text}");
    assert!(took < Duration::from_secs(8), "5 requests at 50 req/s arrive at once, not after {took:?}");
    for e in &events {
        let ts = e["ts_ms"].as_u64().expect("a timestamp");
        // Live: requests of now, not history (a request may have started just before the tap).
        assert!(ts + 2_000 >= tap_began && ts <= now_ms(), "{e}");
        assert_eq!((e["method"].as_str(), e["path"].as_str()), (Some("GET"), Some("/")), "{e}");
        assert!(e["workload"].as_str().is_some_and(|w| !w.is_empty()), "{e}");
        assert_eq!(e["tls"], true, "{e}");
        assert!(e["peer_id"].as_str().is_some_and(|p| p.starts_with("spiffe://demo.mesh/")), "{e}");
    }

    // tap, human, filtered to one service's inbound side.
    let (out, _) = run(
        &[&["tap", "--max", "3", "--duration", "10s", "--workload", "books", "--direction", "inbound"], &cp[..]]
            .concat(),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three requests:\n{text}");
    assert!(lines[0].starts_with("TIME"), "{text}");
    for l in &lines[1..] {
        assert!(l.contains(" books-") && l.contains(" inbound ") && l.contains(web_id), "{l}");
    }

    // top: the paths, counted live.
    let (out, _) = run(
        &[&["top", "-o", "json", "--duration", "3s", "--interval", "1s"], &cp[..]].concat(),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let last: Value = serde_json::from_str(text.lines().last().expect("snapshots")).expect("JSON");
    assert_eq!(last["final"], true, "{text}");
    let rows = last["rows"].as_array().expect("rows");
    let web_root = rows.iter().find(|r| r["service"] == "web" && r["path"] == "/").expect("web's GET /");
    assert!(web_root["count"].as_u64().is_some_and(|n| n >= 50), "3 s at 50 req/s: {web_root}");

    // stat with a proxy named directly.
    let (out, _) = run(&["stat", "-o", "json", "--window", "1s", "--proxy", &web0_admin], Duration::from_secs(30));
    let doc = json(&out);
    assert_eq!(doc["rows"].as_array().map(Vec::len), Some(1), "{doc:#}");
    assert_eq!(row(&doc, "web-0")["proxies_up"], 1);

    // The demo still ends cleanly.
    let (status, out, err) = demo.finish(Duration::from_secs(60));
    assert!(status.success(), "demo: {status}\n{out}\n{err}");
}
