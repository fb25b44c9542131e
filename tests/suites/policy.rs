//! Traffic management and resilience with real traffic through proxies and
//! deliberately faulty backends: retries and their budget, timeouts,
//! ejection and re-admission, splits, header and path routes, faults, rate
//! limits, limits, and inbound authorization.

#![allow(clippy::unwrap_used)]

use mesh_proxy::Proxy;
use mesh_tests::apps::{self, App};
use mesh_tests::load::Load;
use mesh_tests::mesh::{self, Mesh};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One service in a policy test registry: name and endpoint addresses.
fn service(y: &mut String, name: &str, eps: &[SocketAddr], extra: &str) {
    let _ =
        write!(y, "  - name: {name}\n    ports:\n      - port: 80\n        protocol: http\n{extra}    endpoints:\n");
    if eps.is_empty() {
        y.push_str("      []\n");
    }
    for e in eps {
        let _ = writeln!(y, "      - address: \"{e}\"");
    }
}

/// Replicas of the HTTP app behind sidecars (plaintext mesh).
async fn replicas(prefix: &str, n: usize) -> (Vec<App>, Vec<Proxy>, Vec<SocketAddr>) {
    let (mut a, mut p, mut e) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let app = apps::http(&format!("{prefix}-{i}")).await;
        let side = mesh::sidecar(&format!("{prefix}-{i}"), app.addr).await;
        e.push(side.inbound_addr().unwrap());
        a.push(app);
        p.push(side);
    }
    (a, p, e)
}

/// Status, `x-replica` and how long the request took, as curl measured it
/// (from its start of the transfer: spawning curl on a loaded machine can
/// take longer than the timings these tests check).
async fn status_of(url: &str) -> (u16, String, Duration) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %header{x-replica}", url])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.splitn(3, ' ');
    let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let took = parts.next().and_then(|t| t.parse::<f64>().ok()).map_or(Duration::MAX, Duration::from_secs_f64);
    (code, parts.next().unwrap_or("").to_string(), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_mask_a_half_failing_replica_and_the_budget_caps_a_total_outage() {
    let (apps_, _p, eps) = replicas("web", 2).await;
    apps_[1].set_fail_percent(50);
    let mut y = String::from("services:\n");
    service(&mut y, "web", &eps, "    trafficPolicy:\n      retryBudget: {ratio: 0.5, minPerSecond: 5, ttl: 2s}\n");
    y.push_str("routes:\n  - name: web-retries\n    service: web\n    rules:\n      - retries: {attempts: 3, on: [5xx], backoff: {base: 1ms, max: 5ms}}\n");
    let mesh = Mesh::start(&[]).await;
    mesh.write_registry_text(&y);
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    mesh::wait_resolved(&client, 2).await;
    // Over a number of requests, not a time: a loaded machine sends fewer per second.
    let load = Load::start(&format!("http://{}/", client.upstream_addrs()[0]), 4, false);
    let (out, _) = load.stop_after(1000, Duration::ZERO, Duration::from_secs(60)).await;
    let total = out.ok + out.failed;
    let success = out.ok as f64 / total as f64;
    eprintln!(
        "measured: retries turned a 50 %-failing replica into {:.3} % success over {total} requests",
        success * 100.0
    );
    assert!(success >= 0.999, "success {:.4} over {total}: {:?}", success, out.errors);

    // Total outage: every request fails; retries may add at most
    // ratio × requests plus the floor (minPerSecond × 2 s) once per window
    // the load ran (the floor renews as the window slides: every 1.8 s at
    // worst, its ten 200 ms slots), and one more.
    // (Let the first phase's requests leave the budget's 2 s window first.)
    // Without a budget, 3 attempts would add 3 × the requests sent; a budget
    // of the floor alone would add under a quarter of them (at least 400
    // are sent).
    apps_[0].set_fail_percent(100);
    apps_[1].set_fail_percent(100);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before: u64 = apps_.iter().map(|a| a.requests()).sum();
    let load = Load::start(&format!("http://{}/", client.upstream_addrs()[0]), 4, false);
    let (out, ran) = load.stop_after(400, Duration::from_secs(3), Duration::from_secs(60)).await;
    let sent = out.ok + out.failed;
    let reached: u64 = apps_.iter().map(|a| a.requests()).sum::<u64>() - before;
    let extra = reached.saturating_sub(sent) as f64;
    let allowed = 0.5 * sent as f64 + 10.0 * (ran.as_secs_f64() / 1.8 + 1.0);
    eprintln!(
        "measured: total outage, {sent} requests sent in {ran:?}, {reached} reached the apps: {extra} retries, budget {allowed}"
    );
    assert!(
        extra <= allowed * 1.05,
        "retries added {extra} requests to {sent}: more than the budget allows ({allowed})"
    );
    let ratio_part = 0.5 * sent as f64;
    assert!(extra >= ratio_part * 0.5, "the budget should be used, not just capped: {extra} of {ratio_part}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_fire_at_the_configured_value() {
    let (_a, _p, eps) = replicas("web", 1).await;
    let mut y = String::from("services:\n");
    service(&mut y, "web", &eps, "");
    y.push_str("routes:\n  - name: web-timeouts\n    service: web\n    rules:\n      - matches: [{path: {prefix: /hang}}]\n        timeout: 500ms\n");
    let mesh = Mesh::start(&[]).await;
    mesh.write_registry_text(&y);
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    mesh::wait_resolved(&client, 1).await;
    // Never early, on every try; a loaded machine can only make one late
    // (scheduling adds, never subtracts), so the fastest of three must be
    // on time: a timeout of any other value misses the band every time.
    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let (code, _, took) = status_of(&format!("http://{}/hang", client.upstream_addrs()[0])).await;
        assert_eq!(code, 504);
        eprintln!("measured: a 500ms route timeout answered 504 after {took:?}");
        assert!(took >= Duration::from_millis(450), "timed out early, after {took:?}");
        fastest = fastest.min(took);
    }
    assert!(fastest <= Duration::from_millis(650), "timed out after {fastest:?} at the fastest of three");
    let (code, _, _) = status_of(&format!("http://{}/", client.upstream_addrs()[0])).await;
    assert_eq!(code, 200, "other paths are not affected");
}

/// Three replicas behind sidecars, one answering 500 to everything, under
/// concurrent load with `consecutiveFailures: 3, baseEjection: 5s`: it is
/// ejected after 3 consecutive failures (a few more already on their way),
/// gets no request while ejected (the two others take the load), is ejected
/// exactly once (`endpoint_ejections_total`), and once healthy is tried
/// again after the ejection (probation) and re-admitted. Catches: no
/// ejection (it keeps getting traffic), ejected endpoints that never return,
/// and failures of requests in flight at the ejection counted as failed
/// probations (checked: without the fix in `balance::Health::failure` the
/// count is 2, each doubling the ejection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_readmitted_after_probation() {
    let (apps_, _p, eps) = replicas("web", 3).await;
    let mut y = String::from("services:\n");
    service(
        &mut y,
        "web",
        &eps,
        "    trafficPolicy:\n      circuitBreaker: {consecutiveFailures: 3, baseEjection: 5s, maxEjection: 20s}\n",
    );
    let mesh = Mesh::start(&[]).await;
    mesh.write_registry_text(&y);
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    mesh::wait_resolved(&client, 3).await;
    let url = format!("http://{}/", client.upstream_addrs()[0]);
    apps_[1].set_fail_percent(100);
    let before = apps_[1].requests();
    // Concurrent load, so the balancer keeps offering the failing endpoint
    // work (sequential requests would all go to the faster, healthy one).
    let load = Load::start(&url, 4, false);
    // Ejected: seen in the client sidecar's count (a loaded machine may take
    // a while to send the first requests; a breaker that never ejects fails
    // at any deadline).
    let ejections = || async {
        let m = mesh::admin_get(client.admin_addr(), "/metrics").await;
        mesh::metric_sum(&m, &["endpoint_ejections_total{"])
    };
    let ejected = mesh::eventually(Duration::from_secs(20), || async { ejections().await >= 1.0 }).await;
    assert!(ejected, "never ejected; {} requests reached it", apps_[1].requests() - before);
    // Requests sent to it before the ejection may still be on their way:
    // wait until its count settles (the ejection lasts 5 s, the window
    // below 1.5 s of it).
    let mut seen = apps_[1].requests();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = apps_[1].requests();
        if now == seen {
            break;
        }
        seen = now;
    }
    let failures = apps_[1].requests() - before;
    eprintln!("measured: the failing endpoint was ejected after {failures} requests reached it");
    // Three consecutive failures eject it; requests already on their way may add a few.
    assert!((3..=7).contains(&failures), "ejected after 3 consecutive failures, saw {failures}");
    let during = apps_[1].requests();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(apps_[1].requests(), during, "an ejected endpoint got traffic");
    // The two others take the load. Their split is the latency-aware
    // balancer's call (on a loaded machine one can be much faster than the
    // other: CI once saw web-2 under 50), so the bound is on the pair, and
    // each must still be in service.
    let snap = load.snapshot();
    let took = |r: &str| snap.by_replica.get(r).copied().unwrap_or(0);
    assert!(took("web-0") + took("web-2") > 60, "the healthy replicas took too little: {snap:?}");
    for healthy in ["web-0", "web-2"] {
        assert!(took(healthy) > 0, "{healthy} took nothing while web-1 was ejected: {snap:?}");
    }
    // Ejected once: the failures of requests already on their way when it
    // was ejected are no failed probations (they used to double it, twice).
    let m = mesh::admin_get(client.admin_addr(), "/metrics").await;
    assert_eq!(mesh::metric_sum(&m, &["endpoint_ejections_total{"]), 1.0, "{m}");
    // Healthy again: after the ejection it is tried (probation) and re-admitted.
    apps_[1].set_fail_percent(0);
    let back = mesh::eventually(Duration::from_secs(30), || async { apps_[1].requests() > during + 20 }).await;
    let out = load.stop().await;
    assert!(back, "the endpoint was not re-admitted: {out:?}");
}

/// Three replicas (the apps themselves are the endpoints, so the client
/// sidecar connects to them directly); one crashes, so connecting to it is
/// refused, and comes back healthy on the same address 500 ms later. Under
/// load (4 workers), with `consecutiveFailures: 3, baseEjection: 2s`:
/// - no request fails but those in flight on the replica as it crashed (a
///   refused connect goes to another replica);
/// - it gets traffic again (20 requests) within 45 s of the crash (the 1 s
///   penalty's own decay to the healthy replicas' cost takes ~43 s): catches
///   an endpoint kept out for good (ejected and never re-admitted, or a load
///   penalty that never decays). Measured alone: 3.7–12 s (over 20 s once,
///   with the rest of the suite running), not the 2 s ejection:
///   each refused connect also penalizes the load estimate (1 s, decaying
///   with a 5 s time constant), and the replica must first win a pick
///   against that. Its first answer now replaces the penalty (before, the
///   penalty decayed on its own: 18–40 s under this paced load).
///
/// Whether the Health ejection or the load estimate's connect-failure
/// penalty keeps it away first depends on timing (a penalized endpoint is
/// rarely picked, so three consecutive failures may never happen): the
/// ejection itself is proven with 5xx in
/// `a_failing_endpoint_is_ejected_and_readmitted_after_probation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refusing_connections_is_avoided_then_returns() {
    let mut apps_ = Vec::new();
    for i in 0..3 {
        apps_.push(apps::http(&format!("web-{i}")).await);
    }
    let eps: Vec<SocketAddr> = apps_.iter().map(|a| a.addr).collect();
    let mut y = String::from("services:\n");
    let breaker =
        "    trafficPolicy:\n      circuitBreaker: {consecutiveFailures: 3, baseEjection: 2s, maxEjection: 10s}\n";
    service(&mut y, "web", &eps, breaker);
    let mesh = Mesh::start(&[]).await;
    mesh.write_registry_text(&y);
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    mesh::wait_resolved(&client, 3).await;
    let url = format!("http://{}/", client.upstream_addrs()[0]);
    // Paced: a flat-out load would starve this suite's timed tests.
    let load = Load::start_paced(&url, 4, false, Duration::from_millis(1));
    let all_serve =
        mesh::eventually(Duration::from_secs(20), || async { apps_.iter().all(|a| a.requests() > 10) }).await;
    assert!(all_serve, "not every replica got traffic before the crash: {:?}", load.snapshot());

    // The crash: connections to web-2 are refused from now on.
    apps_[2].kill();
    let crashed = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = apps::http_at(eps[2], "web-2").await;
    let returned = mesh::eventually(Duration::from_millis(44500), || async { back.requests() > 20 }).await;
    eprintln!(
        "measured: the restarted replica had {} requests {:?} after its crash",
        back.requests(),
        crashed.elapsed()
    );
    let out = load.stop().await;
    assert!(
        returned,
        "the replica was not re-admitted within 45 s of its crash: {} requests; {out:?}",
        back.requests()
    );
    // Only what was in flight on web-2 as it crashed may fail: one request per worker.
    assert!(out.failed <= 4, "{} requests failed, more than were in flight at the crash: {:?}", out.failed, out.errors);
}

/// Counts responses by replica over `n` requests with `c` workers.
async fn spread(url: &str, n: u64, c: usize) -> std::collections::HashMap<String, u64> {
    let load = Load::start(url, c, false);
    while load.snapshot().ok + load.snapshot().failed < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = load.stop().await;
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    out.by_replica
}

fn split_registry(v1: &[SocketAddr], v2: &[SocketAddr], w1: u32, w2: u32) -> String {
    let mut y = String::from("services:\n");
    service(&mut y, "web", v1, "");
    service(&mut y, "web-v2", v2, "");
    let _ = write!(
        y,
        "routes:\n  - name: canary\n    service: web\n    rules:\n      - backends:\n          - {{service: web, weight: {w1}}}\n          - {{service: web-v2, weight: {w2}}}\n"
    );
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_splits_are_accurate_and_change_live_without_failures() {
    let (_a1, _p1, v1) = replicas("v1", 1).await;
    let (_a2, _p2, v2) = replicas("v2", 1).await;
    let mesh = Mesh::start(&[]).await;
    mesh.write_registry_text(&split_registry(&v1, &v2, 90, 10));
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    mesh::wait_resolved(&client, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("http://{}/", client.upstream_addrs()[0]);
    let by = spread(&url, 10_000, 8).await;
    let total: u64 = by.values().sum();
    let share = *by.get("v2-0").unwrap_or(&0) as f64 / total as f64;
    eprintln!("measured: a 90/10 split sent {:.2} % of {total} requests to v2", share * 100.0);
    assert!((share - 0.10).abs() <= 0.02, "v2 got {:.2} % of {total}", share * 100.0);

    // Live changes under load: 90/10 → 50/50 → 0/100, nothing fails.
    let load = Load::start(&url, 4, false);
    for (w1, w2) in [(50, 50), (0, 100)] {
        tokio::time::sleep(Duration::from_millis(800)).await;
        mesh.write_registry_text(&split_registry(&v1, &v2, w1, w2));
    }
    // The last change reaches the client sidecar (how soon depends on the
    // machine's load): a window where v2 served and v1 did not. A change
    // never applied never gives one; a leak is caught by the window after.
    let count = |o: &mesh_tests::load::Outcome, r: &str| o.by_replica.get(r).copied().unwrap_or(0);
    let started = Instant::now();
    loop {
        let a = load.snapshot();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = load.snapshot();
        if count(&b, "v1-0") == count(&a, "v1-0") && count(&b, "v2-0") >= count(&a, "v2-0") + 20 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "0/100 still sent traffic to v1 after 20 s: {b:?}");
    }
    let before = load.snapshot();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let out = load.stop().await;
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    let recent_v1 =
        out.by_replica.get("v1-0").copied().unwrap_or(0) - before.by_replica.get("v1-0").copied().unwrap_or(0);
    assert_eq!(recent_v1, 0, "0/100 still sent traffic to v1");
    let recent_v2 = count(&out, "v2-0") - count(&before, "v2-0");
    assert!(recent_v2 > 0, "nothing served in the last window: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_path_routes_faults_and_rate_limits() {
    let (_a1, _p1, v1) = replicas("v1", 1).await;
    let (_a2, _p2, v2) = replicas("v2", 1).await;
    let mut y = String::from("services:\n");
    service(&mut y, "web", &v1, "");
    service(&mut y, "web-v2", &v2, "");
    y.push_str(
        "routes:
  - name: web-routes
    service: web
    rules:
      - name: canary-header
        matches: [{headers: [{name: x-canary, exact: \"1\"}]}]
        backends: [{service: web-v2, weight: 1}]
      - name: v2-path
        matches: [{path: {prefix: /v2}}]
        backends: [{service: web-v2, weight: 1}]
      - name: flaky
        matches: [{path: {prefix: /headers}}]
        faults: {abort: {percent: 20, httpStatus: 503}}
      - name: limited
        matches: [{path: {prefix: /bytes}}]
        rateLimit: {requestsPerSecond: 50, burst: 5}
",
    );
    let mesh = Mesh::start(&[]).await;
    mesh.write_registry_text(&y);
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    mesh::wait_resolved(&client, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = format!("http://{}", client.upstream_addrs()[0]);

    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%header{x-replica}", "-H", "x-canary: 1", &format!("{base}/")])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v2-0", "header route");
    assert_eq!(status_of(&format!("{base}/v2/x")).await.1, "v2-0", "path route");
    assert_eq!(status_of(&format!("{base}/v1")).await.1, "v1-0", "no route: the service itself");

    // Fault injection: 20 % aborted, within ±2 points over 5000 requests.
    let load = Load::start(&format!("{base}/headers"), 8, false);
    while load.snapshot().ok + load.snapshot().failed < 5000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = load.stop().await;
    let aborted = out.failed as f64 / (out.ok + out.failed) as f64;
    eprintln!("measured: a 20 % abort fault aborted {:.2} % of {} requests", aborted * 100.0, out.ok + out.failed);
    assert!((aborted - 0.20).abs() <= 0.02, "aborted {:.2} %", aborted * 100.0);

    // Rate limit: 50/s (burst 5) holds under a heavier load.
    // The ceiling is over the whole time requests could pass: from before
    // the first request to the last one finishing (a loaded machine only
    // lengthens that time, so the bucket's 5 + 50/s bounds it at any speed).
    // The floor is over a window inside the run, after the first request
    // passed (starting the workers on a loaded machine takes a while), and
    // is looser: a stalled machine sends nothing for a moment, and the
    // bucket keeps only 5 of the tokens it would have spent. A limiter at
    // half the rate or per connection (×8) fails either way.
    let started = Instant::now();
    let load = Load::start(&format!("{base}/bytes/1"), 8, false);
    while load.snapshot().ok == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "nothing passed the rate limit: {:?}", load.snapshot());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (from, passed_before) = (Instant::now(), load.snapshot().ok);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let passed_inside = load.snapshot().ok - passed_before;
    let window = from.elapsed();
    let out = load.stop().await;
    let rate = out.ok as f64 / started.elapsed().as_secs_f64();
    let inside = passed_inside as f64 / window.as_secs_f64();
    eprintln!("measured: a 50/s rate limit passed {rate:.1}/s over the run, {inside:.1}/s inside it");
    assert!(rate <= 52.0, "{rate}/s passed the 50/s limit ({out:?})");
    assert!(inside >= 40.0, "only {inside}/s passed a 50/s limit ({out:?})");
    assert!(out.errors.iter().any(|e| e.starts_with("429")), "{:?}", out.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_answer_503_at_once() {
    let (_a, _p, eps) = replicas("web", 1).await;
    let mut y = String::from("services:\n");
    service(&mut y, "web", &eps, "    trafficPolicy:\n      limits: {maxConcurrentRequests: 5}\n");
    let mesh = Mesh::start(&[]).await;
    mesh.write_registry_text(&y);
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    mesh::wait_resolved(&client, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The admitted requests last 5 s, so all 20 are in flight together
    // even when starting 20 curls on a loaded machine takes seconds; a
    // limiter that queued instead of shedding would answer after ~5 s.
    let url = format!("http://{}/slow/5000", client.upstream_addrs()[0]);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let url = url.clone();
        set.spawn(async move { status_of(&url).await });
    }
    let mut ok = 0;
    let mut shed = 0;
    while let Some(r) = set.join_next().await {
        let (code, _, took) = r.unwrap();
        match code {
            200 => ok += 1,
            503 => {
                shed += 1;
                assert!(took < Duration::from_secs(2), "a shed request waited {took:?}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, shed), (5, 15));
}

const HOUR: Duration = Duration::from_secs(3600);

async fn curl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("curl").args(["-s", "-m", "5"]).args(args).output().await.unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `denied` (a request the policy denies) answers 403: the
/// policy has reached the server's sidecar (how soon depends on the
/// machine's load). A policy never applied fails at any deadline.
async fn policy_applied<F: std::future::Future<Output = String>>(denied: impl Fn() -> F) {
    let started = Instant::now();
    loop {
        let code = denied().await;
        if code == "403" {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the policy denied nothing after 20 s (last: {code})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_allows_and_denies_identities_namespaces_and_networks() {
    let mesh = Mesh::start_secure(&[], HOUR).await;
    let app = apps::http("web-0").await;
    // Permissive, so plaintext clients reach the policy (and networks decide).
    let side = mesh
        .sidecar_with("web-0", "web", app.addr, |c| {
            if let Some(i) = c.inbound.as_mut() {
                i.mode = mesh_proxy::config::InboundMode::Permissive;
            }
        })
        .await;
    let inbound = side.inbound_addr().unwrap();
    let mut y = String::from("services:\n");
    service(&mut y, "web", &[inbound], "");
    y.push_str(
        "authorizations:
  - name: web-authz
    service: web
    default: deny
    rules:
      - name: frontend
        identities: [spiffe://mesh.test/ns/default/sa/frontend]
      - name: ops-admin
        namespaces: [ops]
        http: [{path: {prefix: /headers}}]
      - name: lan
        networks: [127.0.0.2/32]
",
    );
    mesh.write_registry_text(&y);
    let frontend = mesh.client("c1", "frontend", &["web.default:80"]).await;
    let evil = mesh.client("c2", "evil", &["web.default:80"]).await;
    let ops = mesh.client_in("c3", "ops", "dashboard", &["web.default:80"]).await;
    for p in [&side, &frontend, &evil, &ops] {
        mesh::wait_ready(p).await;
    }
    mesh::wait_resolved(&frontend, 1).await;
    let url = |p: &Proxy, path: &str| format!("http://{}{path}", p.upstream_addrs()[0]);
    let code = |args: Vec<String>| async move {
        let mut a: Vec<&str> = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        a.extend(args.iter().map(String::as_str));
        curl(&a).await
    };
    policy_applied(|| code(vec![url(&evil, "/")])).await;

    // By exact identity.
    assert_eq!(code(vec![url(&frontend, "/")]).await, "200");
    // Denied identity: 403 naming the policy.
    let denied = curl(&["-i", &url(&evil, "/")]).await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert!(denied.contains("denied by policy web-authz (default:deny)"), "{denied}");
    // gRPC callers get PERMISSION_DENIED in gRPC terms.
    let grpc =
        curl(&["-i", "--http2-prior-knowledge", "-H", "content-type: application/grpc", &url(&evil, "/pkg.Svc/Call")])
            .await;
    assert!(grpc.contains("grpc-status: 7"), "{grpc}");
    // Namespace-wide, and only for the HTTP route the rule names.
    assert_eq!(code(vec![url(&ops, "/headers")]).await, "200");
    assert_eq!(code(vec![url(&ops, "/")]).await, "403");
    // Unauthenticated clients by network.
    let direct = format!("http://{inbound}/");
    assert_eq!(code(vec!["--interface".into(), "127.0.0.2".into(), direct.clone()]).await, "200");
    assert_eq!(code(vec!["--interface".into(), "127.0.0.3".into(), direct]).await, "403");

    let m = mesh::admin_get(side.admin_addr(), "/metrics").await;
    for rule in ["frontend", "ops-admin", "lan"] {
        let r = format!("rule=\"{rule}\"");
        assert!(
            mesh::metric_sum(&m, &["inbound_authorization_total{", "policy=\"web-authz\"", &r, "decision=\"allow\""])
                >= 1.0,
            "{m}"
        );
    }
    assert!(
        mesh::metric_sum(&m, &["inbound_authorization_total{", "rule=\"default:deny\"", "decision=\"deny\""]) >= 3.0,
        "{m}"
    );
}

/// A rule that lists an identity and a network admits only clients meeting
/// both; a networks-only rule still admits plaintext clients by address.
/// Catches OR semantics (either criterion admitting) in the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_rules_require_every_criterion_they_list() {
    let mesh = Mesh::start_secure(&[], HOUR).await;
    let app = apps::http("api-0").await;
    let side = mesh
        .sidecar_with("api-0", "api", app.addr, |c| {
            if let Some(i) = c.inbound.as_mut() {
                i.mode = mesh_proxy::config::InboundMode::Permissive;
            }
        })
        .await;
    let inbound = side.inbound_addr().unwrap();
    let mut y = String::from("services:\n");
    service(&mut y, "api", &[inbound], "");
    // Client sidecars dial from 127.0.0.1; plaintext curl picks its source.
    y.push_str(
        "authorizations:
  - name: api-authz
    service: api
    default: deny
    rules:
      - name: frontend-from-elsewhere
        identities: [spiffe://mesh.test/ns/default/sa/frontend]
        networks: [127.0.0.9/32]
      - name: batch-from-loopback
        serviceAccounts: [batch]
        networks: [127.0.0.1/32]
      - name: lan
        networks: [127.0.0.2/32]
",
    );
    mesh.write_registry_text(&y);
    let frontend = mesh.client("c1", "frontend", &["api.default:80"]).await;
    let batch = mesh.client("c2", "batch", &["api.default:80"]).await;
    for p in [&side, &frontend, &batch] {
        mesh::wait_ready(p).await;
    }
    mesh::wait_resolved(&frontend, 1).await;
    mesh::wait_resolved(&batch, 1).await;
    let code = |args: Vec<String>| async move {
        let mut a: Vec<&str> = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        a.extend(args.iter().map(String::as_str));
        curl(&a).await
    };
    let via = |p: &Proxy| format!("http://{}/", p.upstream_addrs()[0]);
    policy_applied(|| code(vec![via(&frontend)])).await;
    // The right identity from the wrong network: denied.
    assert_eq!(code(vec![via(&frontend)]).await, "403", "identity alone must not pass");
    // Identity and network both hold: allowed.
    assert_eq!(code(vec![via(&batch)]).await, "200");
    // The network of an identity rule, without the identity: denied.
    let direct = format!("http://{inbound}/");
    assert_eq!(code(vec!["--interface".into(), "127.0.0.1".into(), direct.clone()]).await, "403");
    // A networks-only rule admits plaintext clients by address.
    assert_eq!(code(vec!["--interface".into(), "127.0.0.2".into(), direct]).await, "200");

    let m = mesh::admin_get(side.admin_addr(), "/metrics").await;
    let allowed = |rule: &str| {
        let r = format!("rule=\"{rule}\"");
        mesh::metric_sum(&m, &["inbound_authorization_total{", "policy=\"api-authz\"", &r, "decision=\"allow\""])
    };
    assert_eq!(allowed("frontend-from-elsewhere"), 0.0, "{m}");
    assert!(allowed("batch-from-loopback") >= 1.0 && allowed("lan") >= 1.0, "{m}");
}

/// A port the registry declares HTTP is served as HTTP however long the
/// client takes to speak (up to the header read timeout), and anything else
/// on it is refused. Here the client proxy's detection timeout is 200 ms and
/// a client stays silent for 600 ms, then sends a request a route sends to
/// another service. Catches: falling back to opaque TCP after the detection
/// timeout on a declared-HTTP port (the request then bypasses the route and
/// reaches `web`'s own replica, and with it every retry, timeout and rate
/// limit; seen in a stressed run as a 50/s limit passing 84/s), and non-HTTP
/// bytes forwarded on such a port (the app would count a connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_cannot_skip_the_routes_of_a_declared_http_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (v1, _p1, e1) = replicas("v1", 1).await;
    let (_v2, _p2, e2) = replicas("v2", 1).await;
    let mut y = String::from("services:\n");
    service(&mut y, "web", &e1, "");
    service(&mut y, "web-v2", &e2, "");
    y.push_str(
        "routes:\n  - name: all-to-v2\n    service: web\n    rules:\n      - backends: [{service: web-v2, weight: 1}]\n",
    );
    let mesh = Mesh::start(&[]).await;
    mesh.write_registry_text(&y);
    let client = mesh::client_with("client", &mesh.control_url(), &["web.default:80"], |c| {
        c.limits.detect_timeout = Duration::from_millis(200);
    })
    .await;
    mesh::wait_resolved(&client, 1).await;
    let addr = client.upstream_addrs()[0];
    // The route is in force for a prompt client.
    let (code, replica, _) = status_of(&format!("http://{addr}/")).await;
    assert_eq!((code, replica.as_str()), (200, "v2-0"), "the route sends web's traffic to web-v2");

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("x-replica: v2-0"), "a silent client skipped the route: {answer}");

    let v1_connections = v1[0].connections();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x00\x01not http at all\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await.unwrap();
    assert!(read.is_err() || rest.is_empty(), "non-HTTP bytes got an answer: {rest:?}");
    let m = mesh::admin_get(client.admin_addr(), "/metrics").await;
    assert_eq!(mesh::metric_sum(&m, &["tcp_refused_total{", "reason=\"not_http\""]), 1.0, "{m}");
    assert_eq!(v1[0].connections(), v1_connections, "non-HTTP bytes reached web's replica");
}
