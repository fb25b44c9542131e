//! The app's kubelet probes, served on the admin port.
//!
//! In strict mode the inbound proxy refuses plaintext, so kubelet's `httpGet`
//! and `tcpSocket` probes of app ports would fail. The injector rewrites them
//! to `GET <admin port>/app-health/<container>/<kind>` and hands the proxy the
//! original probes (`MESH_APP_PROBES`, JSON); this module performs exactly
//! those probes against the app on loopback and answers 200 or 503.
//!
//! Nothing in a request chooses what is probed: the path selects one of the
//! configured probes by exact match, and the target (loopback, the configured
//! port, path, scheme and headers) comes from the configuration alone. An
//! unknown path is a 404 that connects to nothing.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The environment variable the injector writes and the proxy reads.
pub const ENV: &str = "MESH_APP_PROBES";
/// Every rewritten probe's path starts with this.
pub const PREFIX: &str = "/app-health/";
/// Probes running at once (more wait, within their timeout): a flood of
/// requests to the admin port cannot become a flood of connections to the app.
const CONCURRENT: usize = 4;
/// Kubernetes' default `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// One configured probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppProbe {
    /// The admin path that runs it (`/app-health/web/liveness`).
    pub path: String,
    /// The app's port (a named port resolved by the injector).
    pub port: u16,
    /// What is checked.
    pub action: Action,
    /// The probe's `timeoutSeconds`.
    #[serde(serialize_with = "secs")]
    pub timeout: Duration,
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Action {
    /// `httpGet`: a status from 200 to 399 is healthy.
    Http {
        /// TLS without verification, as kubelet.
        https: bool,
        /// The request's path (and query).
        path: String,
        /// Extra request headers (values not shown in `/config`).
        #[serde(serialize_with = "header_names")]
        headers: Vec<(String, String)>,
    },
    /// `tcpSocket`: a completed connect is healthy.
    Tcp,
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn header_names<S: Serializer>(h: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|(name, _)| name))
}

/// `MESH_APP_PROBES` that cannot be used, with what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{ENV}: {0}; it is written by the injector (`meshctl inject` or the webhook): re-inject the pod")]
pub struct AppProbeError(String);

/// One entry as the injector writes it; `probe` is the original Kubernetes
/// probe (the injector restores it from here on `uninject`).
#[derive(Deserialize)]
struct Entry {
    path: String,
    port: u16,
    probe: K8sProbe,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct K8sProbe {
    http_get: Option<HttpGet>,
    tcp_socket: Option<serde_json::Value>,
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpGet {
    path: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<Header>,
}

#[derive(Deserialize)]
struct Header {
    name: String,
    value: String,
}

/// Parses `MESH_APP_PROBES` (a JSON array), refusing anything it would not
/// probe exactly as written.
pub fn parse(json: &str) -> Result<Vec<AppProbe>, AppProbeError> {
    let entries: Vec<Entry> =
        serde_json::from_str(json).map_err(|e| AppProbeError(format!("not the expected JSON: {e}")))?;
    let mut out: Vec<AppProbe> = Vec::with_capacity(entries.len());
    for e in entries {
        let bad = |what: &str| AppProbeError(format!("probe {}: {what}", e.path));
        let rest = e.path.strip_prefix(PREFIX).ok_or_else(|| bad(&format!("the path must start with {PREFIX}")))?;
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-./_".contains(&b)) {
            return Err(bad("the path must be /app-health/<container>/<kind>"));
        }
        if out.iter().any(|p| p.path == e.path) {
            return Err(bad("configured twice"));
        }
        if e.port == 0 {
            return Err(bad("port 0"));
        }
        let action = match (e.probe.http_get, e.probe.tcp_socket) {
            (Some(h), None) => {
                let https = match h.scheme.as_deref().unwrap_or("HTTP") {
                    "HTTP" => false,
                    "HTTPS" => true,
                    other => return Err(bad(&format!("scheme {other:?} (HTTP or HTTPS)"))),
                };
                let mut path = h.path.unwrap_or_default();
                if !path.starts_with('/') {
                    path.insert(0, '/');
                }
                if path.parse::<http::uri::PathAndQuery>().is_err() {
                    return Err(bad(&format!("httpGet.path {path:?} is not a valid request path")));
                }
                for h in &h.http_headers {
                    if HeaderName::try_from(h.name.as_str()).is_err() || HeaderValue::try_from(&h.value).is_err() {
                        return Err(bad(&format!("header {:?} is not a valid HTTP header", h.name)));
                    }
                }
                Action::Http { https, path, headers: h.http_headers.into_iter().map(|h| (h.name, h.value)).collect() }
            }
            (None, Some(_)) => Action::Tcp,
            _ => return Err(bad("exactly one of httpGet and tcpSocket")),
        };
        let timeout = e.probe.timeout_seconds.filter(|s| *s > 0).map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        out.push(AppProbe { path: e.path, port: e.port, action, timeout });
    }
    Ok(out)
}

/// The configured probes, looked up by exact path, and the bound on how
/// many run at once.
#[derive(Debug, Clone)]
pub struct AppProbes {
    by_path: Arc<BTreeMap<String, AppProbe>>,
    permits: Arc<Semaphore>,
}

impl AppProbes {
    /// The probes of the app, which they reach on 127.0.0.1 (kubelet dials
    /// the pod's IP; an app listening on all addresses answers both).
    pub fn new(probes: &[AppProbe]) -> Self {
        let by_path = probes.iter().map(|p| (p.path.clone(), p.clone())).collect();
        Self { by_path: Arc::new(by_path), permits: Arc::new(Semaphore::new(CONCURRENT)) }
    }

    /// The configured paths.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.by_path.keys().map(String::as_str)
    }

    /// Runs the probe configured at `path`: `None` when there is none (and
    /// nothing was connected to), else healthy or not with what was seen.
    pub async fn run(&self, path: &str) -> Option<Result<String, String>> {
        let probe = self.by_path.get(path)?;
        let work = async {
            let _permit = self.permits.acquire().await.map_err(|_| "the proxy is shutting down".to_string())?;
            check(probe, SocketAddr::from((Ipv4Addr::LOCALHOST, probe.port))).await
        };
        Some(match tokio::time::timeout(probe.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}s", probe.timeout.as_secs())),
        })
    }
}

async fn check(probe: &AppProbe, addr: SocketAddr) -> Result<String, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    match &probe.action {
        Action::Tcp => Ok(format!("connected to {addr}")),
        Action::Http { https: false, path, headers } => get(stream, addr, path, headers).await,
        Action::Http { https: true, path, headers } => {
            let config = mesh_identity::tls::probe_client_config().map_err(|e| e.to_string())?;
            let name = mesh_identity::tls::server_name(&addr.ip().to_string()).map_err(|e| e.to_string())?;
            let tls =
                mesh_identity::tls::connect(config, name, stream).await.map_err(|e| format!("TLS with {addr}: {e}"))?;
            get(tls, addr, path, headers).await
        }
    }
}

/// One `GET` over `io`, as kubelet sends it (its `Host`, `User-Agent` and
/// `Accept` unless the probe sets them).
async fn get<IO>(io: IO, addr: SocketAddr, path: &str, headers: &[(String, String)]) -> Result<String, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP with {addr}: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::get(path);
    let set = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    for (default, value) in
        [("host", addr.to_string()), ("user-agent", "kube-probe/mesh".into()), ("accept", "*/*".into())]
    {
        if !set(default) {
            req = req.header(default, value);
        }
    }
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req.header("connection", "close").body(Empty::new()).map_err(|e| e.to_string())?;
    let rsp = sender.send_request(req).await.map_err(|e| format!("GET {path} on {addr}: {e}"));
    conn.abort();
    let status = rsp?.status();
    if (200..400).contains(&status.as_u16()) {
        Ok(format!("GET {path} on {addr}: {status}"))
    } else {
        Err(format!("GET {path} on {addr}: {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a parser that lets through what it would not probe exactly
    /// (another scheme, a path outside /app-health/, both actions, a bad
    /// header), or loses the timeout and headers.
    #[test]
    fn parses_what_the_injector_writes_and_refuses_the_rest() {
        let ok = parse(
            r#"[{"path":"/app-health/web/liveness","container":"web","field":"livenessProbe","port":8080,
                 "probe":{"httpGet":{"path":"healthz?full=1","port":"http","scheme":"HTTPS",
                          "httpHeaders":[{"name":"X-Probe","value":"1"}]},"timeoutSeconds":3,"periodSeconds":10}},
                {"path":"/app-health/db/readiness","port":5432,"probe":{"tcpSocket":{"port":5432}}}]"#,
        )
        .expect("valid");
        assert_eq!(ok[0].timeout, Duration::from_secs(3));
        assert_eq!(
            ok[0].action,
            Action::Http { https: true, path: "/healthz?full=1".into(), headers: vec![("X-Probe".into(), "1".into())] }
        );
        assert_eq!((ok[1].port, &ok[1].action, ok[1].timeout), (5432, &Action::Tcp, DEFAULT_TIMEOUT));
        let shown = serde_json::to_string(&ok[0]).expect("json");
        assert!(shown.contains("X-Probe") && !shown.contains(r#""1""#), "header values stay out of /config: {shown}");

        for (bad, names) in [
            (r#"[{"path":"/metrics","port":1,"probe":{"tcpSocket":{}}}]"#, "must start with"),
            (r#"[{"path":"/app-health/","port":1,"probe":{"tcpSocket":{}}}]"#, "must be"),
            (r#"[{"path":"/app-health/a","port":0,"probe":{"tcpSocket":{}}}]"#, "port 0"),
            (r#"[{"path":"/app-health/a","port":1,"probe":{"httpGet":{"scheme":"FTP"}}}]"#, "scheme"),
            (r#"[{"path":"/app-health/a","port":1,"probe":{"httpGet":{},"tcpSocket":{}}}]"#, "exactly one"),
            (r#"[{"path":"/app-health/a","port":1,"probe":{"exec":{}}}]"#, "exactly one"),
            (
                r#"[{"path":"/app-health/a","port":1,"probe":{"httpGet":{"httpHeaders":[{"name":"a b","value":"x"}]}}}]"#,
                "header",
            ),
            (
                r#"[{"path":"/app-health/a","port":1,"probe":{"tcpSocket":{}}},{"path":"/app-health/a","port":2,"probe":{"tcpSocket":{}}}]"#,
                "twice",
            ),
            ("{}", "JSON"),
        ] {
            let err = parse(bad).expect_err(bad).to_string();
            assert!(err.contains(names) && err.contains(ENV), "{bad}: {err}");
        }
    }
}
