//! Kubelet probes in strict mode: the injector rewrites an app's probes to
//! the proxy's admin port (`/app-health/<container>/<kind>`), and the proxy
//! performs the original probes against a real app on loopback. The probes
//! come from `meshctl inject`'s own output (the `MESH_APP_PROBES` it writes),
//! so the two halves are tested against each other.

#![allow(clippy::unwrap_used)]

use mesh_identity::tls::{MeshServerConfig, ServerConfig};
use mesh_kube::inject::manifests::{Mode, rewrite};
use mesh_kube::inject::{InjectConfig, PROXY_CONTAINER, probes::APP_PROBES_ENV};
use mesh_proxy::app_probe::{self, AppProbe};
use mesh_tests::mesh::{self, Mesh};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A real app on loopback: counts connections, records each request head,
/// and answers every request with `status`.
struct App {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start(tls: Option<Arc<ServerConfig>>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted: Arc<AtomicUsize> = Arc::default();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(200));
        let (a, h, s) = (Arc::clone(&accepted), Arc::clone(&heads), Arc::clone(&status));
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (h, s, tls) = (Arc::clone(&h), Arc::clone(&s), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => answer(conn, h, s).await,
                        Some(config) => {
                            if let Ok(accepted) = mesh_identity::tls::accept(MeshServerConfig::from(config), conn).await
                            {
                                answer(accepted.into_parts().0, h, s).await;
                            }
                        }
                    }
                });
            }
        });
        App { addr, accepted, heads, status, task }
    }

    /// Stops listening: connections are refused from now on.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn answer<IO: AsyncRead + AsyncWrite + Unpin>(
    mut io: IO,
    heads: Arc<Mutex<Vec<String>>>,
    status: Arc<AtomicU16>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    heads.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned());
    let code = status.load(Ordering::SeqCst);
    let rsp = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = io.write_all(rsp.as_bytes()).await;
    let _ = io.shutdown().await;
}

/// Sends one request and returns the status, or `None` when no HTTP answer came.
async fn request(addr: SocketAddr, method: &str, target: &str, extra: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\n{extra}connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.ok()?.ok()?;
    let line = String::from_utf8_lossy(&out).lines().next()?.to_string();
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The probes `meshctl inject` hands the proxy for a Deployment whose `web`
/// container serves on `port` (named `http`) with these probes.
fn injected_probes(port: u16, https_port: u16) -> Vec<AppProbe> {
    let yaml = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: web:1
        ports: [{{name: http, containerPort: {port}}}, {{name: tls, containerPort: {https_port}}}]
        livenessProbe:
          httpGet: {{path: /healthz, port: http, httpHeaders: [{{name: X-Probe, value: kubelet}}]}}
          timeoutSeconds: 2
        readinessProbe: {{tcpSocket: {{port: {port}}}}}
        startupProbe: {{httpGet: {{path: /started, port: tls, scheme: HTTPS}}}}
"#
    );
    let config = InjectConfig::new("r", "0.1.0", "mesh-system", "anchors".into());
    let (out, _) = rewrite(&yaml, Mode::Inject, &config).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&out).unwrap();
    let inits = doc.pointer("/spec/template/spec/initContainers").unwrap().as_array().unwrap();
    let proxy = inits.iter().find(|c| c["name"] == PROXY_CONTAINER).unwrap();
    let env = proxy["env"].as_array().unwrap().iter().find(|e| e["name"] == APP_PROBES_ENV).unwrap();
    app_probe::parse(env["value"].as_str().unwrap()).unwrap()
}

fn self_signed() -> Arc<ServerConfig> {
    let ca = mesh_identity::ca::generate_trust_anchor("app.local", Duration::from_secs(3600)).unwrap();
    let chain = mesh_identity::pem::certs(&ca.cert_pem).unwrap();
    let key = mesh_identity::pem::private_key(&ca.key_pem).unwrap();
    let config = ServerConfig::builder_with_provider(mesh_identity::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// A strict sidecar refuses kubelet's plaintext probe of the app port, and
/// answers the rewritten probes by probing the real app: its health path
/// with the probe's headers (200 while the app says 200, 503 when it says
/// 503), a TCP connect, and HTTPS with a self-signed certificate; once the
/// app is down, 503.
///
/// Catches: a proxy that answers 200 without probing (the 503 steps), one
/// that probes the wrong port or path or drops the probe's headers (the
/// recorded request), one that verifies the app's certificate (the HTTPS
/// probe), and one that reports a refused connect as healthy (the app down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_sidecar_serves_the_apps_probes_on_its_admin_port() {
    let mesh = Mesh::start_secure(&[], Duration::from_secs(3600)).await;
    let app = App::start(None).await;
    let https = App::start(Some(self_signed())).await;
    let probes = injected_probes(app.addr.port(), https.addr.port());
    assert_eq!(probes.len(), 3, "{probes:?}");
    let side = mesh.sidecar_with("web-0", "web", app.addr, |c| c.app_probes = probes).await;
    mesh::wait_ready(&side).await;
    let admin = side.admin_addr();

    let kubelet = request(side.inbound_addr().unwrap(), "GET", "/healthz", "").await;
    assert_ne!(kubelet, Some(200), "strict inbound refuses plaintext: the gap the rewrite closes");
    let before = app.heads.lock().unwrap().len();

    assert_eq!(request(admin, "GET", "/app-health/web/liveness", "").await, Some(200));
    let head = app.heads.lock().unwrap()[before..].join("");
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
    let lower = head.to_lowercase();
    assert!(lower.contains("x-probe: kubelet") && lower.contains("user-agent: kube-probe/"), "{head}");

    assert_eq!(request(admin, "GET", "/app-health/web/readiness", "").await, Some(200), "TCP connect");
    assert_eq!(request(admin, "GET", "/app-health/web/startup", "").await, Some(200), "HTTPS, self-signed");
    assert!(https.heads.lock().unwrap().iter().any(|h| h.starts_with("GET /started ")), "over TLS");

    app.status.store(503, Ordering::SeqCst);
    assert_eq!(request(admin, "GET", "/app-health/web/liveness", "").await, Some(503), "the app says unhealthy");
    app.status.store(302, Ordering::SeqCst);
    assert_eq!(request(admin, "GET", "/app-health/web/liveness", "").await, Some(200), "3xx is healthy");

    app.stop().await;
    assert_eq!(request(admin, "GET", "/app-health/web/liveness", "").await, Some(503), "the app is down");
    assert_eq!(request(admin, "GET", "/app-health/web/readiness", "").await, Some(503), "nothing to connect to");
    https.stop().await;
}

/// The admin port is no proxy: a path that is not a configured probe is
/// 404 and connects to nothing, and nothing in a request (query, Host,
/// other headers, extra path segments, the method) changes what a
/// configured probe connects to.
///
/// Catches: a prefix match (`/app-health/web/liveness/x` running the
/// liveness probe), a port or host taken from the request, and a probe run
/// for a method other than GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_probe_paths_are_404_and_requests_choose_no_target() {
    let app = App::start(None).await;
    let decoy = App::start(None).await;
    let probes = injected_probes(app.addr.port(), 1);
    let side = mesh::sidecar_with("web-0", app.addr, |c| c.app_probes = probes).await;
    let admin = side.admin_addr();
    let d = decoy.addr;

    for path in [
        "/app-health/nope/liveness",
        "/app-health/web/liveness/x",
        "/app-health/web/",
        "/app-health/web/%6civeness",
        &format!("/app-health/{d}"),
    ] {
        assert_eq!(request(admin, "GET", path, "").await, Some(404), "{path}");
    }
    assert_eq!(request(admin, "POST", "/app-health/web/liveness", "content-length: 0\r\n").await, Some(405));
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0, "no connection for any of those");

    let steering = format!("x-forwarded-host: {d}\r\nx-port: {}\r\n", d.port());
    let path = format!("/app-health/web/liveness?port={}&host={}", d.port(), d.ip());
    assert_eq!(request(admin, "GET", &path, &steering).await, Some(200));
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1, "the configured app, once");
    assert_eq!(decoy.accepted.load(Ordering::SeqCst), 0, "never the address the request named");
    assert!(app.heads.lock().unwrap()[0].starts_with("GET /healthz HTTP/1.1\r\n"), "the configured path only");
}
