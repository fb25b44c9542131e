//! The data path end to end: client → client sidecar → server sidecar → app,
//! discovered through the control plane, over HTTP/1.1, HTTP/2, gRPC and TCP.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_tests::mesh::{self, Mesh, Svc};
use mesh_tests::{apps, grpc, load::Load, pb};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `n` replicas of the HTTP app, each behind its own sidecar.
async fn replicas(n: usize) -> (Vec<apps::App>, Vec<mesh_proxy::Proxy>, Vec<SocketAddr>) {
    let mut apps_ = Vec::new();
    let mut proxies = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let app = apps::http(&format!("web-{i}")).await;
        let p = mesh::sidecar(&format!("web-{i}"), app.addr).await;
        addrs.push(p.inbound_addr().unwrap());
        apps_.push(app);
        proxies.push(p);
    }
    (apps_, proxies, addrs)
}

fn url(p: &mesh_proxy::Proxy, path: &str) -> String {
    format!("http://{}{path}", p.upstream_addrs()[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_requests_across_replicas() {
    let (_apps, _proxies, addrs) = replicas(3).await;
    let mesh = Mesh::start(&[Svc::new("web", 80, "http", &addrs)]).await;
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    for h2 in [false, true] {
        // Paced, not flat out: a saturated test process (every app, proxy and
        // client share its two threads) would starve whichever connection's
        // tasks wake least often, and the balancer would rightly avoid it.
        let load = Load::start_paced(&url(&client, "/"), 12, h2, Duration::from_millis(5));
        // A count, not a duration: however slow the machine, ≥ 600 requests.
        let (out, _) = load.stop_after(600, Duration::from_secs(3), Duration::from_secs(60)).await;
        assert_eq!(out.failed, 0, "h2={h2}: {:?}", out.errors);
        for i in 0..3 {
            let share = *out.by_replica.get(&format!("web-{i}")).unwrap_or(&0) as f64 / out.ok as f64;
            // Peak-EWMA favours whichever replica is fastest at the moment, so
            // shares are not equal on a busy machine (CI saw 3.9 % for one
            // replica whose sidecar's tasks were starved); each must still get
            // work. Catches: discovery handing the balancer one endpoint, or a
            // balancer that always picks the same one (0 % for the others).
            assert!(share > 0.01, "h2={h2}: replica web-{i} got {:.1} % of {out:?}", share * 100.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_endpoint_under_load_fails_nothing() {
    let (apps_, mut proxies, addrs) = replicas(2).await;
    let mesh = Mesh::start(&[Svc::new("web", 80, "http", &addrs)]).await;
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    let load = Load::start(&url(&client, "/slow/5"), 8, false);
    let both = mesh::eventually(Duration::from_secs(20), || async { apps_[1].requests() > 0 }).await;
    assert!(both, "replica 1 must take traffic before removal");

    // Remove replica 1 from the registry; traffic must drain off it: the
    // client sidecar drops it (how soon depends on the machine's load; a
    // removal never applied fails at any deadline), then what was on its
    // way finishes and nothing more comes.
    mesh.write_registry(&[Svc::new("web", 80, "http", &addrs[..1])]);
    mesh::wait_resolved(&client, 1).await;
    let drained = mesh::eventually(Duration::from_secs(10), || async {
        let before = apps_[1].requests();
        tokio::time::sleep(Duration::from_millis(300)).await;
        apps_[1].requests() == before
    })
    .await;
    assert!(drained, "replica 1 still receives requests after its removal");
    // Now it can go away for real, and nothing may fail.
    let gone = proxies.pop().unwrap();
    assert!(gone.shutdown().await, "removed replica's proxy drained");
    apps_[1].kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let out = load.stop().await;
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    assert!(out.by_replica.get("web-0").copied().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keepalive_and_chunked_bodies_with_curl() {
    let (apps_, _proxies, addrs) = replicas(1).await;
    let mesh = Mesh::start(&[Svc::new("web", 80, "http", &addrs)]).await;
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    let base = url(&client, "");

    // Two requests on one curl invocation reuse the client connection.
    let out = Command::new("curl")
        .args(["-sv", &format!("{base}/"), &format!("{base}/")])
        .output()
        .expect("curl is installed (apt-get install curl)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web-0web-0");
    assert!(stderr.contains("Re-using existing connection") || stderr.contains("Reusing existing"), "{stderr}");

    // A chunked upload is echoed back intact.
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let file = dir.path().join("payload");
    std::fs::write(&file, &payload).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-H", "Transfer-Encoding: chunked", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("{base}/echo"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, payload, "chunked body corrupted");

    // A chunked download (no content-length) arrives whole.
    let out = Command::new("curl").args(["-s", "-D", "-", &format!("{base}/bytes/200000")]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{}", &text[..200.min(text.len())]);
    assert!(text.ends_with(&"x".repeat(1000)));

    // Keep-alive end to end: 100 sequential requests, few app connections.
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let conns_before = apps_[0].connections();
    for _ in 0..100 {
        let rsp = http.get(format!("{base}/").parse().unwrap()).await.unwrap();
        assert!(rsp.status().is_success());
        rsp.into_body().collect().await.unwrap();
    }
    let opened = apps_[0].connections() - conns_before;
    assert!(opened <= 2, "inbound proxy opened {opened} connections for 100 sequential requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_multiplexes_over_one_connection_and_curl_prior_knowledge() {
    let (apps_, _proxies, addrs) = replicas(1).await;
    let mesh = Mesh::start(&[Svc::new("web", 80, "http2", &addrs)]).await;
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    let base = url(&client, "");

    let out = Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-w", " %{http_version}", &format!("{base}/")])
        .output()
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web-0 2");

    let h2 = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
    let conns_before = apps_[0].connections();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let h2 = h2.clone();
        // Each stream lasts 2 s, so however slowly a loaded machine sets up
        // 200 of them, 50 are open at once unless the proxy serializes them.
        let uri: http::Uri = format!("{base}/slow/2000").parse().unwrap();
        set.spawn(async move { h2.get(uri).await.map(|r| r.status()) });
    }
    while let Some(r) = set.join_next().await {
        assert!(r.unwrap().unwrap().is_success());
    }
    let opened = apps_[0].connections() - conns_before;
    assert!(opened <= 1, "200 concurrent streams used {opened} app connections");
    let concurrent = apps_[0].stats.max_active.load(Ordering::Relaxed);
    assert!(concurrent >= 50, "streams were not concurrent at the app: max {concurrent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_bidirectional_streaming() {
    let app = grpc::start("grpc-0").await;
    let side = mesh::sidecar("grpc-0", app.addr).await;
    let mesh = Mesh::start(&[Svc::new("echo", 9090, "grpc", &[side.inbound_addr().unwrap()])]).await;
    let client = mesh::client("client", &mesh.control_url(), &["echo.default:9090"]).await;
    let channel = tonic::transport::Endpoint::from_shared(url(&client, "")).unwrap().connect().await.unwrap();
    let mut c = pb::echo_client::EchoClient::new(channel);

    let rsp = c.unary(pb::Msg { text: "hi".into(), seq: 1, replica: String::new() }).await.unwrap().into_inner();
    assert_eq!((rsp.text.as_str(), rsp.replica.as_str()), ("hi", "grpc-0"));
    // Application errors (status in trailers) pass through untouched.
    let err = c.unary(pb::Msg { text: "fail".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(err.message(), "asked to fail");

    // Bidirectional: each message is answered before the next is sent, so
    // nothing may be buffered to the end of the stream in either direction.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = c.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for seq in 0..100u64 {
        tx.send(pb::Msg { text: format!("m{seq}"), seq, replica: String::new() }).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), replies.message()).await.unwrap().unwrap().unwrap();
        assert_eq!((m.seq, m.text), (seq + 1, format!("m{seq}")));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none(), "stream ends after the client half-closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passthrough_and_server_first_protocols() {
    let echo = apps::tcp_echo().await;
    let banner = apps::banner("220 ready\r\n").await;
    let echo_side = mesh::sidecar("echo-0", echo.addr).await;
    // Server-first: the inbound side must not wait for the client to speak.
    let banner_port = banner.addr.port();
    // Its detection timeout is long, so a sidecar that detected anyway would
    // hold the banner for 10 s, far past the bound below.
    let banner_side = mesh::sidecar_with("banner-0", banner.addr, |c| {
        c.limits.detect_timeout = Duration::from_secs(10);
        if let Some(i) = c.inbound.as_mut() {
            i.opaque_ports = vec![banner_port];
        }
    })
    .await;
    // The same banner server, not marked opaque: detection times out quickly.
    let banner_unmarked = mesh::sidecar_with("banner-1", banner.addr, |c| {
        c.limits.detect_timeout = Duration::from_millis(300);
    })
    .await;
    let mesh = Mesh::start(&[
        Svc::new("echo", 7000, "detect", &[echo_side.inbound_addr().unwrap()]),
        Svc::new("smtp", 25, "opaque", &[banner_side.inbound_addr().unwrap()]),
        Svc::new("smtp2", 25, "detect", &[banner_unmarked.inbound_addr().unwrap()]),
    ])
    .await;
    let client = mesh::client_with(
        "client",
        &mesh.control_url(),
        &["echo.default:7000", "smtp.default:25", "smtp2.default:25"],
        |c| c.limits.detect_timeout = Duration::from_millis(300),
    )
    .await;
    let ups = client.upstream_addrs().to_vec();

    // Binary, non-HTTP bytes round-trip.
    let mut s = tokio::net::TcpStream::connect(ups[0]).await.unwrap();
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let (mut r, mut w) = s.split();
    let (_, got) = tokio::join!(w.write_all(&payload), async {
        let mut got = vec![0u8; payload.len()];
        r.read_exact(&mut got).await.map(|_| got)
    });
    assert_eq!(got.unwrap(), payload);

    // Unmarked, detection gives up after 300 ms on each side; one that never
    // gives up fails at any bound.
    for (i, bound) in [(1, Duration::from_secs(3)), (2, Duration::from_secs(8))] {
        let start = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(ups[i]).await.unwrap();
        let mut buf = [0u8; 11];
        tokio::time::timeout(bound, s.read_exact(&mut buf)).await.expect("banner arrives").unwrap();
        assert_eq!(&buf, b"220 ready\r\n", "upstream {i} after {:?}", start.elapsed());
        s.write_all(b"EHLO x\r\n").await.unwrap();
        let mut buf = [0u8; 8];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"EHLO x\r\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_under_load() {
    let (_apps, _proxies, addrs) = replicas(2).await;
    let mut mesh = Mesh::start(&[Svc::new("web", 80, "http", &addrs[..1])]).await;
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    let load = Load::start(&url(&client, "/"), 6, false);
    tokio::time::sleep(Duration::from_millis(500)).await;

    mesh.stop_control().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = load.snapshot();
    assert_eq!(during.failed, 0, "traffic failed while the control plane was down: {:?}", during.errors);
    // The registry changes while the control plane is down ...
    mesh.write_registry(&[Svc::new("web", 80, "http", &addrs)]);
    mesh.start_control().await;
    // ... and the proxy reconnects and learns the new replica.
    let learned = mesh::eventually(Duration::from_secs(30), || async {
        load.snapshot().by_replica.get("web-1").copied().unwrap_or(0) > 0
    })
    .await;
    let out = load.stop().await;
    assert!(learned, "proxy did not resume its watch after the restart: {out:?}");
    assert_eq!(out.failed, 0, "{:?}", out.errors);
}

/// Multiplexed HTTP/2 load through client sidecar → server sidecar → `app`
/// for at least `n` requests and `secs`, and until the server sidecar has
/// counted `min_resent` resent requests (whether a stream races a GOAWAY is
/// up to scheduling; a sidecar that never counts one fails after 60 s):
/// every failed attempt counted; and its `http_requests_resent_total` by reason.
async fn h2_load_through_sidecars(
    app: &apps::App,
    n: u64,
    secs: u64,
    min_resent: f64,
) -> (mesh_tests::load::Outcome, String) {
    let side = mesh::sidecar("web", app.addr).await;
    let mesh = Mesh::start(&[Svc::new("web", 80, "http2", &[side.inbound_addr().unwrap()])]).await;
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    mesh::wait_resolved(&client, 1).await;
    let load = Load::start(&url(&client, "/"), 16, true);
    let admin = side.admin_addr();
    let started = std::time::Instant::now();
    loop {
        let m = mesh::admin_get(admin, "/metrics").await;
        if mesh::metric_sum(&m, &["http_requests_resent_total{"]) >= min_resent {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "fewer than {min_resent} resent in 60 s: {:?}",
            load.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (out, _) = load.stop_after(n, Duration::from_secs(secs), Duration::from_secs(60)).await;
    let metrics = mesh::admin_get(side.admin_addr(), "/metrics").await;
    let resent = metrics.lines().filter(|l| l.starts_with("http_requests_resent_total")).collect::<Vec<_>>().join("\n");
    (out, resent)
}

/// An app that closes each HTTP/2 connection with GOAWAY after 20 requests
/// (nginx does after `keepalive_requests`), under multiplexed load: no
/// request fails. Catches a pool that keeps handing out a connection that
/// received GOAWAY (requests then come back unsent and, with one endpoint,
/// have nowhere else to go: 502), and streams above GOAWAY's last stream ID
/// treated as failed instead of sent again. The sidecar counts what it
/// resent in `http_requests_resent_total` (checked: without the count in
/// `http/proxy.rs`, the last assertion fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_closing_http2_connections_with_goaway_fails_no_request() {
    let app = apps::h2_goaway("web", 20, Duration::from_millis(2)).await;
    let (out, resent) = h2_load_through_sidecars(&app, 600, 2, 1.0).await;
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    assert!(app.connections() >= 20, "the app closed too few connections: {}", app.connections());
    assert!(mesh::metric_sum(&resent, &["http_requests_resent_total{"]) >= 1.0, "nothing counted as resent:\n{resent}");
    eprintln!("{resent}");
}

/// An app that refuses every 7th HTTP/2 stream with REFUSED_STREAM (it
/// promises it did not process them): no request fails. Catches refused
/// streams answered as upstream failures instead of sent again; and that
/// they are counted as `http_requests_resent_total{reason="refused_stream"}`
/// (about one request in seven).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_http2_streams_are_sent_again() {
    let app = apps::h2_refusing("web", 7).await;
    let (out, resent) = h2_load_through_sidecars(&app, 400, 2, 0.0).await;
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    let refused = mesh::metric_sum(&resent, &["http_requests_resent_total{", "reason=\"refused_stream\""]);
    assert!(refused >= out.ok as f64 / 14.0, "{refused} resends counted for {} requests:\n{resent}", out.ok);
}

/// A server sidecar shutting down gracefully sends GOAWAY on its HTTP/2
/// connections; the client sidecar's requests go to the other replica (or
/// finish where they were) without a single failure. Catches streams above
/// the last stream ID failed as upstream errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sidecar_shutdown_under_http2_load_fails_no_request() {
    let (_apps, mut proxies, addrs) = replicas(2).await;
    let mesh = Mesh::start(&[Svc::new("web", 80, "http2", &addrs)]).await;
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    mesh::wait_resolved(&client, 2).await;
    let load = Load::start(&url(&client, "/slow/2"), 16, true);
    // Counts, not durations: traffic on both before, and after the shutdown.
    let flowing = |n: u64| {
        let load = &load;
        move || async move { load.snapshot().ok >= n }
    };
    assert!(mesh::eventually(Duration::from_secs(30), flowing(100)).await, "too little traffic: {:?}", load.snapshot());
    let leaving = proxies.remove(0);
    assert!(leaving.shutdown().await, "the sidecar did not drain");
    let after = load.snapshot().ok + 100;
    let more = mesh::eventually(Duration::from_secs(30), flowing(after)).await;
    let out = load.stop().await;
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    assert!(more, "too little traffic after the shutdown: {out:?}");
}

/// Latency-aware balancing end to end: three replicas, one answering 50 ms
/// later than the others. Power of two choices over peak-EWMA load sends
/// the slow replica only what its decayed cost lets it win (it loses every
/// pair with a fast replica until its ~51 ms estimate decays below a fast
/// replica's ~1–3 ms × (pending + 1)), so it gets a small share: measured
/// 0.4–0.8 % with a 20 ms delay (its first few requests, before its cost
/// was observed). 20 ms was too close to a loaded machine's scheduling
/// stalls: a fast replica's peak estimate after a stall let the slow one
/// win 11.3 % (seen with stress-ng running). The bound, < 10 %, leaves a wide margin for a
/// loaded machine; a uniform (or round-robin) pick gives each replica ~33 %
/// (σ ≈ 2 % at n = 600), over ten σ above it. Catches a balancer that ignores latency (random, round
/// robin, least-pending only over equal in-flight counts) or an estimate
/// that is never fed (every endpoint stuck at the default cost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_50ms_slower_gets_a_clearly_smaller_share() {
    let (apps_, _proxies, addrs) = replicas(3).await;
    apps_[2].set_delay(Duration::from_millis(50));
    let mesh = Mesh::start(&[Svc::new("web", 80, "http", &addrs)]).await;
    let client = mesh::client("client", &mesh.control_url(), &["web.default:80"]).await;
    mesh::wait_resolved(&client, 3).await;
    let load = Load::start(&url(&client, "/"), 4, false);
    // A count, not a duration: however slow the machine, ≥ 600 requests.
    let enough = mesh::eventually(Duration::from_secs(60), || async { load.snapshot().ok >= 900 }).await;
    let out = load.stop().await;
    assert!(enough && out.ok >= 600, "too little traffic: {out:?}");
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    let share = |name: &str| *out.by_replica.get(name).unwrap_or(&0) as f64 / out.ok as f64;
    let (fast0, fast1, slow) = (share("web-0"), share("web-1"), share("web-2"));
    eprintln!(
        "measured: over {} requests, fast {:.1} % / {:.1} %, slow (+50 ms) {:.1} %",
        out.ok,
        fast0 * 100.0,
        fast1 * 100.0,
        slow * 100.0
    );
    assert!(slow < 0.10, "the slow replica got {:.1} % of {out:?}", slow * 100.0);
    // How the fast pair splits is the balancer's call on a loaded machine
    // (one sidecar's tasks may be starved): each must still take a real
    // part, which a balancer stuck on one replica does not give.
    assert!(fast0 > 0.10 && fast1 > 0.10, "both fast replicas must share the rest: {out:?}");
}

/// Fifty simulated proxies (`mesh_tests::swarm`: each its own TLS
/// connection to the control plane with a certificate from a join token,
/// three Destination watches each over a 100-service registry, all of them
/// on `svc-0`) every one see an endpoint of `svc-0` move, and the clients
/// the one client watching another moved service sees that too. Catches: a control plane
/// that notifies only the first watcher of a target (later subscribers
/// handed a receiver nothing sends to), or that drops updates for some
/// streams when many change at once. Not timed: the figures are `cargo
/// xtask bench --scenario control-plane`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watching_client_sees_an_endpoint_move() {
    use mesh_spec::synthetic::Synthetic;
    use mesh_tests::swarm::{self, Swarm, SwarmConfig};
    const CLIENTS: usize = 50;
    let mut syn = Synthetic::new(100, 1000).unwrap();
    let mesh = Mesh::start_secure(&[], Duration::from_secs(3600)).await;
    mesh.write_registry_text(&mesh_spec::to_yaml(&syn.file));
    let admin = mesh.admin_addr();
    let loaded =
        || async move { mesh::metric_sum(&mesh::admin_get(admin, "/metrics").await, &["registry_services"]) == 100.0 };
    assert!(mesh::eventually(Duration::from_secs(30), loaded).await, "the 100-service registry was never loaded");
    let dir = mesh.identity_dir().unwrap();
    let token = dir.mint_token("default", "swarm", Duration::from_secs(600)).unwrap();
    let anchors = std::fs::read_to_string(dir.path().join(mesh_identity::dir::ANCHORS)).unwrap();
    let tls = swarm::certify(&mesh.control_url(), &token, &anchors).await.unwrap();
    let targets = (0..CLIENTS).map(|c| swarm::targets_for(c, 3, syn.services())).collect();
    let config = SwarmConfig { control_plane: mesh.control_url(), tls: Some(tls), targets, connect_concurrency: 8 };
    let swarm = Swarm::start(config).unwrap();
    let everyone = |addr: SocketAddr| {
        let swarm = &swarm;
        move || {
            let seen = swarm.seen(addr);
            async move { seen.iter().all(Option::is_some) }
        }
    };
    let initial = syn.file.services[0].endpoints[0].address.unwrap();
    assert!(mesh::eventually(Duration::from_secs(30), everyone(initial)).await, "{:?}", swarm.status());
    // Every client has svc-0 by now; its other two watches may still be
    // getting their first answer (a warm CI run saw 49 of 50 at this point).
    let all_synced = || async { swarm.status().synced == CLIENTS };
    assert!(mesh::eventually(Duration::from_secs(30), all_synced).await, "{:?}", swarm.status());

    // svc-2 is watched by client 0 only (targets_for spreads the others).
    let (fresh, other) = (syn.move_endpoint(0).unwrap(), syn.move_endpoint(2).unwrap());
    for i in (3..100).step_by(3) {
        syn.move_endpoint(i).unwrap();
    }
    mesh.write_registry_text(&mesh_spec::to_yaml(&syn.file));
    let all = mesh::eventually(Duration::from_secs(30), everyone(fresh)).await;
    let missed: Vec<usize> =
        swarm.seen(fresh).iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect();
    assert!(all, "clients that never saw {fresh}: {missed:?}");
    let watchers: Vec<bool> = swarm.seen(other).iter().map(Option::is_some).collect();
    assert!(watchers[0], "client 0 watches svc-2 and must see its moved endpoint {other}");
    assert!(watchers[1..].iter().all(|w| !w), "only client 0 watches svc-2: {watchers:?}");
}

/// A secure mesh (mTLS between sidecars) with one service, `name`, whose
/// replicas are the sidecars in front of `apps_`, and a client sidecar.
async fn secure_service(name: &str, apps_: &[SocketAddr]) -> (Mesh, Vec<mesh_proxy::Proxy>, mesh_proxy::Proxy) {
    let mesh = Mesh::start_secure(&[], Duration::from_secs(3600)).await;
    let mut sidecars = Vec::new();
    for (i, app) in apps_.iter().enumerate() {
        sidecars.push(mesh.sidecar(&format!("{name}-{i}"), name, *app).await);
    }
    let addrs: Vec<SocketAddr> = sidecars.iter().map(|s| s.inbound_addr().unwrap()).collect();
    mesh.write_registry(&[Svc::new(name, 80, "http", &addrs)]);
    let client = mesh.client("client", "frontend", &[&format!("{name}.default:80")]).await;
    for s in &sidecars {
        mesh::wait_ready(s).await;
    }
    mesh::wait_ready(&client).await;
    mesh::wait_resolved(&client, addrs.len()).await;
    (mesh, sidecars, client)
}

/// A pod whose app has stopped while clients still send it requests (a
/// Deployment scaled down: the kubelet SIGTERMs the app before every
/// client proxy heard that the endpoint is going): two replicas, the app
/// of one gone, its sidecar still serving and discovery still listing it.
/// Under load no request fails: the sidecar answers that its app never saw
/// the request (`mesh-proxy-unprocessed`), and the client sidecar sends it
/// to the other replica, counted as
/// `http_requests_resent_total{reason="app_refused"}`, and the replica is
/// avoided (penalized like a refused connect). Catches a client sidecar
/// that passes the sidecar's 502 on, or a sidecar that does not mark its
/// refusal (seen failing without the marker's handling in
/// `http/proxy.rs`: 287 of ~590 requests, since a replica answering 502 at
/// once looks fast to the balancer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_app_stopped_fails_no_request() {
    let (live, stopped) = (apps::http("web-0").await, apps::http("web-1").await);
    let (_mesh, _sidecars, client) = secure_service("web", &[live.addr, stopped.addr]).await;
    let warm = Load::start(&url(&client, "/"), 2, false);
    let both =
        mesh::eventually(Duration::from_secs(10), || async { stopped.requests() > 5 && live.requests() > 5 }).await;
    assert!(both, "both replicas must get traffic first: {:?}", warm.stop().await);
    stopped.kill();
    let load = Load::start_paced(&url(&client, "/"), 4, false, Duration::from_millis(1));
    let enough = mesh::eventually(Duration::from_secs(60), || async { load.snapshot().ok >= 300 }).await;
    let out = load.stop().await;
    assert!(enough, "too little traffic: {out:?}");
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    let m = mesh::admin_get(client.admin_addr(), "/metrics").await;
    let resent = mesh::metric_sum(&m, &["http_requests_resent_total{", "reason=\"app_refused\""]);
    assert!(resent >= 1.0, "no request was sent again after the app refused:\n{m}");
}

/// An app that answers with the sidecars' own marker
/// (`mesh-proxy-unprocessed`) is not believed: its sidecar removes the
/// header, so the client sidecar passes the answer on and the app sees
/// each request once. Catches an inbound that lets an app's header through
/// (the client would send a processed, possibly non-idempotent, request
/// elsewhere, or answer 503 with no other replica: seen with the removal
/// in `http/proxy.rs` commented out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_claim_it_did_not_process_a_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut chunk).await {
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        count.fetch_add(1, Ordering::Relaxed);
                        let rsp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nmesh-proxy-unprocessed: app\r\n\r\nok";
                        if s.write_all(rsp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let (_mesh, _sidecars, client) = secure_service("liar", &[app]).await;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for i in 1..=5u64 {
        let req = hyper::Request::post(url(&client, "/")).body(Full::new(Bytes::new())).unwrap();
        let rsp = http.request(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert!(rsp.headers().get("mesh-proxy-unprocessed").is_none(), "the app's marker reached the client");
        assert_eq!(seen.load(Ordering::Relaxed), i, "the app saw request {i} more than once");
    }
}

/// Server sidecars of a secure mesh stopping gracefully one after another
/// under HTTP/1 load (16 workers) while discovery still lists them, as a
/// scaled-down pod's sidecar stops before every client heard: no request
/// fails. A stopping sidecar closes its idle keep-alive connections; one
/// the client sidecar took from its pool as that close was on its way
/// carries the request into a closed connection, with no byte of an answer
/// (RFC 9112 §9.3.1): an idempotent bodyless request is then sent to
/// another replica (`http_requests_resent_total{reason="closed_idle"}`).
/// Catches a client sidecar that answers those 502 (`connection closed
/// before message completed`): seen without the resend in `http/proxy.rs`,
/// 1–3 of 4,000–10,000 requests failed in each of 4 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_server_sidecars_under_http1_load_fail_no_request() {
    let mut apps_ = Vec::new();
    for i in 0..4 {
        apps_.push(apps::http(&format!("web-{i}")).await);
    }
    let addrs: Vec<SocketAddr> = apps_.iter().map(|a| a.addr).collect();
    let (_mesh, mut sidecars, client) = secure_service("web", &addrs).await;
    let load = Load::start(&url(&client, "/"), 16, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Two of four: a request tries up to three replicas (refused connects
    // to stopped ones included), so one live replica is always among them.
    for _ in 0..2 {
        let leaving = sidecars.remove(0);
        assert!(leaving.shutdown().await, "the sidecar did not drain");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = load.stop().await;
    let m = mesh::admin_get(client.admin_addr(), "/metrics").await;
    let resent: Vec<&str> = m.lines().filter(|l| l.starts_with("http_requests_resent_total{")).collect();
    eprintln!("measured: {} ok, {} failed; resent: {resent:?}", out.ok, out.failed);
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    assert!(out.ok > 1000, "too little traffic: {out:?}");
}

/// A relay between the client sidecar and a server sidecar that can sever
/// every connection the way a close lost on its way looks to the client:
/// the server side is gone, the client side hears nothing until it sends,
/// and then gets a reset (as when a sidecar closed an idle connection and
/// its FIN never arrived). Its address and the switch.
async fn severing_relay(to: SocketAddr) -> (SocketAddr, std::sync::Arc<tokio::sync::Notify>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sever = std::sync::Arc::new(tokio::sync::Notify::new());
    let cut = sever.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let cut = cut.clone();
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(to).await else { return };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut down, &mut up) => return,
                    _ = cut.notified() => {}
                }
                drop(up);
                // Silent until the client sends, then a reset.
                let mut byte = [0u8; 1];
                let _ = down.peek(&mut byte).await;
                let _ = down.set_zero_linger();
            });
        }
    });
    (addr, sever)
}

/// A pooled connection to the only replica's sidecar that died without the
/// client sidecar hearing (the pods topology of `cargo xtask bench`: a
/// sidecar closed keep-alive connections idle past its header read timeout
/// and the FIN never reached the client): the next GET goes out on it and
/// is reset with no byte of an answer. The client sidecar sends it again on
/// a new connection (`http_requests_resent_total{reason="closed_idle"}`).
/// Catches a client sidecar that answers 502 (`connection error`): it
/// resent only after `incomplete message` errors and only to another
/// replica, so with one replica the request failed (seen: 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_pooled_connection_that_died_unheard_is_resent() {
    let app = apps::http("web-0").await;
    let mesh = Mesh::start_secure(&[], Duration::from_secs(3600)).await;
    let sidecar = mesh.sidecar("web-0", "web", app.addr).await;
    let (relay, sever) = severing_relay(sidecar.inbound_addr().unwrap()).await;
    mesh.write_registry(&[Svc::new("web", 80, "http", &[relay])]);
    let client = mesh.client("client", "frontend", &["web.default:80"]).await;
    mesh::wait_ready(&sidecar).await;
    mesh::wait_ready(&client).await;
    mesh::wait_resolved(&client, 1).await;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let get = || async {
        let req = hyper::Request::get(url(&client, "/")).body(Full::new(Bytes::new())).unwrap();
        http.request(req).await.unwrap().status()
    };
    assert_eq!(get().await, 200, "the first request, which pools the connection");
    sever.notify_waiters();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get().await, 200, "the request on the connection that died unheard");
    let m = mesh::admin_get(client.admin_addr(), "/metrics").await;
    let resent = mesh::metric_sum(&m, &["http_requests_resent_total{", "reason=\"closed_idle\""]);
    assert_eq!(resent, 1.0, "{m}");
}
