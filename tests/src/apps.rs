//! Plain apps that know nothing of the mesh: an HTTP server (HTTP/1 and
//! HTTP/2), a TCP echo server and a server-first (banner) server.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// Counters an app keeps.
#[derive(Debug, Default)]
pub struct AppStats {
    /// Requests served.
    pub requests: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests in progress now.
    pub active: AtomicU64,
    /// Most requests ever in progress at once.
    pub max_active: AtomicU64,
    /// Percent of requests answered 500, whatever the path.
    pub fail_percent: AtomicU64,
    /// Milliseconds added before answering any request (a slow replica).
    pub delay_ms: AtomicU64,
}

/// A running app; dropping it (or [`App::kill`]) closes the listener and
/// every open connection, like a crashed process.
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name (returned by `GET /`).
    pub name: String,
    /// Its counters.
    pub stats: Arc<AppStats>,
    task: JoinHandle<()>,
}

impl App {
    /// Stops the app abruptly.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Makes `percent` of all requests fail with 500 (0 heals the app).
    pub fn set_fail_percent(&self, percent: u64) {
        self.stats.fail_percent.store(percent.min(100), Ordering::Relaxed);
    }

    /// Makes every request wait `delay` before it is answered, whatever the
    /// path (a replica slower than its peers; zero makes it fast again).
    pub fn set_delay(&self, delay: Duration) {
        self.stats.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the HTTP test app (HTTP/1.1 and HTTP/2 on one port) on an
/// ephemeral loopback port.
///
/// Routes: `GET /` → the app's name; `POST /echo` → the request body
/// streamed back; `GET /bytes/N` → N bytes streamed in 64 KiB chunks;
/// `GET /slow/MS` → answers after MS milliseconds; `GET /status/CODE`;
/// `GET /headers` → the request headers, one per line; `GET /fail/PCT` →
/// 503 with probability PCT %; `GET /hang` → never answers; `GET /reset` →
/// the connection is dropped without a response. Every response carries
/// `x-replica: <name>`.
pub async fn http(name: &str) -> App {
    http_at(SocketAddr::from(([127, 0, 0, 1], 0)), name).await
}

/// [`http`] on a given address (for an app in its own network namespace).
pub async fn http_at(listen: SocketAddr, name: &str) -> App {
    let listener = TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(AppStats::default());
    let name = name.to_string();
    let task = tokio::spawn(serve_http(listener, name.clone(), stats.clone()));
    App { addr, name, stats, task }
}

async fn serve_http(listener: TcpListener, name: String, stats: Arc<AppStats>) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let name = name.clone();
        let stats = stats.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let name = name.clone();
                let stats = stats.clone();
                async move {
                    match route(req, &name, &stats).await {
                        Some(rsp) => Ok(rsp),
                        // Failing the service makes hyper drop the connection: a reset.
                        None => Err(std::io::Error::other("reset requested")),
                    }
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
        // Reap finished connection tasks so the set does not grow forever.
        while conns.try_join_next().is_some() {}
    }
}

async fn route(req: Request<Incoming>, name: &str, stats: &AppStats) -> Option<Response<Body>> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let fail = stats.fail_percent.load(Ordering::Relaxed);
    if fail > 0 && fastrand::u64(0..100) < fail {
        let mut r = Response::new(full("injected failure"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r.headers_mut().insert("x-replica", name.parse().ok()?);
        return Some(r);
    }
    match req.uri().path() {
        "/reset" => return None,
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        p if p.starts_with("/fail/") => {
            let pct: u64 = p.trim_start_matches("/fail/").parse().unwrap_or(0);
            if fastrand::u64(0..100) < pct {
                let mut r = Response::new(full("failed on request"));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r.headers_mut().insert("x-replica", name.parse().ok()?);
                return Some(r);
            }
        }
        _ => {}
    }
    let now = stats.active.fetch_add(1, Ordering::Relaxed) + 1;
    stats.max_active.fetch_max(now, Ordering::Relaxed);
    let delay = stats.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let rsp = respond(req, name).await;
    stats.active.fetch_sub(1, Ordering::Relaxed);
    Some(rsp)
}

async fn respond(req: Request<Incoming>, name: &str) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let head = parts.next().unwrap_or("");
    let arg = parts.next().unwrap_or("");
    let mut rsp = match head {
        "" => Response::new(full(name.to_string())),
        "echo" => Response::new(req.into_body().map_err(Into::into).boxed_unsync()),
        "bytes" => {
            let n: usize = arg.parse().unwrap_or(0);
            Response::new(stream_bytes(n))
        }
        "slow" => {
            let ms: u64 = arg.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(name.to_string()))
        }
        "status" => {
            let code = arg.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut r = Response::new(full(code.as_str().to_string()));
            *r.status_mut() = code;
            r
        }
        "headers" => {
            let mut out = String::new();
            for (k, v) in req.headers() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(out))
        }
        _ => {
            let mut r = Response::new(full("not found"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    rsp.headers_mut().insert("x-replica", name.parse().unwrap());
    rsp
}

fn stream_bytes(n: usize) -> Body {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let chunks = (0..n.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(n - i * CHUNK);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.slice(..len)))
    });
    StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync()
}

/// A TCP echo server.
pub async fn tcp_echo() -> App {
    tcp_echo_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// [`tcp_echo`] on a given address.
pub async fn tcp_echo_at(listen: SocketAddr) -> App {
    tcp_app(listen, "echo", None).await
}

/// A server-first TCP server: sends `banner` on accept, then echoes.
pub async fn banner(banner: &'static str) -> App {
    banner_at(SocketAddr::from(([127, 0, 0, 1], 0)), banner).await
}

/// [`banner`] on a given address.
pub async fn banner_at(listen: SocketAddr, banner: &str) -> App {
    tcp_app(listen, "banner", Some(Bytes::copy_from_slice(banner.as_bytes()))).await
}

async fn tcp_app(listen: SocketAddr, name: &str, banner: Option<Bytes>) -> App {
    let listener = TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(AppStats::default());
    let st = stats.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            st.connections.fetch_add(1, Ordering::Relaxed);
            let banner = banner.clone();
            conns.spawn(async move {
                if let Some(b) = banner
                    && s.write_all(&b).await.is_err()
                {
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            while conns.try_join_next().is_some() {}
        }
    });
    App { addr, name: name.to_string(), stats, task }
}

/// An HTTP/2-only app (prior knowledge) that closes every connection
/// gracefully after `per_connection` requests, the way nginx does after
/// `keepalive_requests`: it sends GOAWAY, finishes the streams it accepted,
/// and refuses later ones. Every request is answered with its name after
/// `delay` (so streams are in flight when GOAWAY goes out).
pub async fn h2_goaway(name: &str, per_connection: u64, delay: Duration) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(AppStats::default());
    let (n, s) = (name.to_string(), stats.clone());
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            s.connections.fetch_add(1, Ordering::Relaxed);
            let (name, stats) = (n.clone(), s.clone());
            conns.spawn(async move {
                let served = Arc::new(AtomicU64::new(0));
                let enough = Arc::new(tokio::sync::Notify::new());
                let (served2, enough2) = (served.clone(), enough.clone());
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (name, stats) = (name.clone(), stats.clone());
                    if served2.fetch_add(1, Ordering::Relaxed) + 1 == per_connection {
                        enough2.notify_one();
                    }
                    async move {
                        stats.requests.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(delay).await;
                        let mut rsp = Response::new(full(name.clone()));
                        rsp.headers_mut().insert("x-replica", name.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(rsp)
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = enough.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    App { addr, name: name.to_string(), stats, task }
}

/// An HTTP/2-only app (prior knowledge) that resets every `every`-th stream
/// with `REFUSED_STREAM` (the server's promise that it did not process it,
/// RFC 9113 §8.7) and answers the others with its name. `requests` counts
/// the answered ones.
pub async fn h2_refusing(name: &str, every: u64) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(AppStats::default());
    let (n, s) = (name.to_string(), stats.clone());
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        let seen = Arc::new(AtomicU64::new(0));
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            s.connections.fetch_add(1, Ordering::Relaxed);
            let (name, stats, seen) = (n.clone(), s.clone(), seen.clone());
            conns.spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else { return };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if (seen.fetch_add(1, Ordering::Relaxed) + 1) % every == 0 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    let name = name.clone();
                    tokio::spawn(async move {
                        let rsp = Response::builder().header("x-replica", name.as_str()).body(()).unwrap();
                        if let Ok(mut body) = respond.send_response(rsp, false) {
                            let _ = body.send_data(Bytes::from(name), true);
                        }
                    });
                }
            });
            while conns.try_join_next().is_some() {}
        }
    });
    App { addr, name: name.to_string(), stats, task }
}
