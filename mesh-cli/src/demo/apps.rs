//! The demo's applications, run as `meshctl demo-app --role ...`: plain
//! HTTP/1.1 services that know nothing about the mesh except the local ports
//! their sidecar gave them.
//!
//! - `books` and `authors` answer `GET /` with JSON after a short random
//!   delay (0.2–3 ms); `authors` fails a configurable share with a 500.
//! - `web` answers `GET /` by calling `books` and `authors` (concurrently,
//!   over keep-alive connections to its sidecar) and combining the answers.
//!
//! Every app answers `GET /healthz` directly, for start-up checks.

use super::http::Pool;
use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long `web` waits for `books` or `authors`.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Which demo app to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The frontend: calls books and authors.
    Web,
    /// A catalogue of books.
    Books,
    /// Author details; fails a small share of requests.
    Authors,
}

/// Flags of `meshctl demo-app` (started by `meshctl demo`, not by people).
#[derive(Debug, Clone, Args)]
pub struct AppArgs {
    /// Which app.
    #[arg(long, value_enum)]
    pub role: Role,
    /// This replica's name, e.g. books-0.
    #[arg(long)]
    pub name: String,
    /// Where to listen.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The books service, through the sidecar (web only), e.g. http://127.0.0.1:4150.
    #[arg(long, required_if_eq("role", "web"))]
    pub books_url: Option<String>,
    /// The authors service, through the sidecar (web only).
    #[arg(long, required_if_eq("role", "web"))]
    pub authors_url: Option<String>,
    /// Share of requests answered with a 500 (0..=1).
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
}

/// What a request handler needs.
#[derive(Debug)]
struct App {
    role: Role,
    name: String,
    failure_rate: f64,
    books: Option<Pool>,
    authors: Option<Pool>,
}

/// Runs an app until SIGTERM or SIGINT.
pub fn run(args: AppArgs) -> anyhow::Result<()> {
    mesh_core::trace::init("MESH_LOG", "info");
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

/// Parses `http://host:port` (or a bare `host:port`) into an address; a
/// name (a Kubernetes Service's, whose ClusterIP does not change) is
/// resolved once, at start.
fn upstream(url: Option<&str>, what: &str) -> anyhow::Result<Option<Pool>> {
    use std::net::ToSocketAddrs;
    let Some(url) = url else { return Ok(None) };
    let authority = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
    let addr: SocketAddr = match authority.parse() {
        Ok(addr) => addr,
        Err(_) => authority
            .to_socket_addrs()
            .with_context(|| format!("invalid --{what}-url {url:?}: expected http://HOST:PORT"))?
            .next()
            .with_context(|| format!("--{what}-url {url:?}: {authority} resolves to no address"))?,
    };
    Ok(Some(Pool::new(addr, what, UPSTREAM_TIMEOUT)))
}

async fn serve(args: AppArgs) -> anyhow::Result<()> {
    let app = Arc::new(App {
        role: args.role,
        name: args.name.clone(),
        failure_rate: args.failure_rate.clamp(0.0, 1.0),
        books: upstream(args.books_url.as_deref(), "books")?,
        authors: upstream(args.authors_url.as_deref(), "authors")?,
    });
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(role = ?args.role, name = %args.name, listen = %args.listen, "demo app serving");
    let signal = mesh_core::shutdown::os_signal();
    tokio::pin!(signal);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            sig = &mut signal => {
                let sig = sig.context("cannot install signal handlers")?;
                tracing::info!(signal = sig, "shutting down");
                break;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let svc = hyper::service::service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
    Ok(())
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    rsp
}

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => reply(StatusCode::OK, &json!({ "status": "ok", "replica": self.name })),
            (&Method::GET, "/") => match self.role {
                Role::Web => self.web().await,
                Role::Books => self.leaf(books()).await,
                Role::Authors => self.leaf(authors()).await,
            },
            _ => reply(StatusCode::NOT_FOUND, &json!({ "error": "not found; try GET /" })),
        }
    }

    /// books and authors: a little work, then the data (or, sometimes, a failure).
    async fn leaf(&self, data: Value) -> Response<Full<Bytes>> {
        let micros = fastrand::u64(200..=3000);
        tokio::time::sleep(Duration::from_micros(micros)).await;
        if self.failure_rate > 0.0 && fastrand::f64() < self.failure_rate {
            let body = json!({ "error": "simulated failure", "replica": self.name });
            return reply(StatusCode::INTERNAL_SERVER_ERROR, &body);
        }
        reply(StatusCode::OK, &json!({ "replica": self.name, "items": data }))
    }

    /// web: both backends at once, one combined page.
    async fn web(&self) -> Response<Full<Bytes>> {
        let (Some(books), Some(authors)) = (&self.books, &self.authors) else {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, &json!({ "error": "web has no backends configured" }));
        };
        let (b, a) = tokio::join!(fetch(books, "books"), fetch(authors, "authors"));
        match (b, a) {
            (Ok(books), Ok(authors)) => {
                reply(StatusCode::OK, &json!({ "replica": self.name, "books": books, "authors": authors }))
            }
            (Err(e), _) | (_, Err(e)) => reply(StatusCode::BAD_GATEWAY, &json!({ "replica": self.name, "error": e })),
        }
    }
}

/// One backend call; any non-2xx answer or transport error is an error message.
async fn fetch(pool: &Pool, what: &str) -> Result<Value, String> {
    let reply = pool.get("/").await.map_err(|e| format!("{what}: {e}"))?;
    if !reply.status.is_success() {
        return Err(format!("{what} answered {}", reply.status));
    }
    serde_json::from_slice(&reply.body).map_err(|e| format!("{what} sent invalid JSON: {e}"))
}

fn books() -> Value {
    json!([
        { "id": 1, "title": "The Left Hand of Darkness", "author_id": 1, "year": 1969 },
        { "id": 2, "title": "A Wizard of Earthsea", "author_id": 1, "year": 1968 },
        { "id": 3, "title": "Kindred", "author_id": 2, "year": 1979 },
        { "id": 4, "title": "Parable of the Sower", "author_id": 2, "year": 1993 },
    ])
}

fn authors() -> Value {
    json!([
        { "id": 1, "name": "Ursula K. Le Guin", "born": 1929 },
        { "id": 2, "name": "Octavia E. Butler", "born": 1947 },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let pool = upstream(Some("http://127.0.0.1:4150/"), "books").expect("valid").expect("some");
        assert!(format!("{pool:?}").contains("addr: 127.0.0.1:4150"), "{pool:?}");
        assert!(upstream(Some("127.0.0.1:4150"), "books").expect("bare address").is_some());
        assert!(upstream(None, "books").expect("none").is_none());
        let err = upstream(Some("http://books:80"), "books").expect_err("names are not addresses");
        assert!(err.to_string().contains("--books-url"), "{err}");
    }
}
