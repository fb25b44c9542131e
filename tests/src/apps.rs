//! Plain apps that know nothing of the mesh: an HTTP server (HTTP/1 and
//! HTTP/2), a TCP echo server and a server-first (banner) server.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
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
/// `GET /headers` → the request headers, one per line. Every response
/// carries `x-replica: <name>`.
pub async fn http(name: &str) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
                async move { Ok::<_, Infallible>(route(req, &name, &stats).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
        // Reap finished connection tasks so the set does not grow forever.
        while conns.try_join_next().is_some() {}
    }
}

async fn route(req: Request<Incoming>, name: &str, stats: &AppStats) -> Response<Body> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let now = stats.active.fetch_add(1, Ordering::Relaxed) + 1;
    stats.max_active.fetch_max(now, Ordering::Relaxed);
    let rsp = respond(req, name).await;
    stats.active.fetch_sub(1, Ordering::Relaxed);
    rsp
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
    tcp_app("echo", None).await
}

/// A server-first TCP server: sends `banner` on accept, then echoes.
pub async fn banner(banner: &'static str) -> App {
    tcp_app("banner", Some(banner)).await
}

async fn tcp_app(name: &str, banner: Option<&'static str>) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(AppStats::default());
    let st = stats.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            st.connections.fetch_add(1, Ordering::Relaxed);
            conns.spawn(async move {
                if let Some(b) = banner
                    && s.write_all(b.as_bytes()).await.is_err()
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
