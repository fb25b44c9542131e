//! A small HTTP/1.1 client over hyper's client connection API, with
//! keep-alive: finished connections go back to an idle list and the next
//! request reuses one. Enough for the demo apps, the traffic generator and
//! scraping admin ports; not a general-purpose client.

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpStream;

/// Largest response body read.
const MAX_BODY: usize = 4 << 20;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request or its response failed on the wire.
    #[error("request to {addr} failed: {reason}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// No complete response within the timeout.
    #[error("no response from {addr} within {timeout:?}")]
    Timeout {
        /// The address.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

/// Keep-alive connections to one address.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    host: String,
    timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
}

impl Pool {
    /// A pool for `addr`, sending `host` as the Host header; every request
    /// (connect, send, read the body) must finish within `timeout`.
    pub fn new(addr: SocketAddr, host: impl Into<String>, timeout: Duration) -> Self {
        Self { addr, host: host.into(), timeout, max_idle: 64, idle: Mutex::new(Vec::new()) }
    }

    /// `GET path`, on an idle connection if one is left, else a new one.
    /// A reused connection that turns out dead is replaced once (the request
    /// is a GET: sending it again is safe).
    pub async fn get(&self, path: &str) -> Result<Reply, ClientError> {
        let attempt = async {
            if let Some(conn) = self.take_idle().await {
                match self.send(conn, path).await {
                    Ok(reply) => return Ok(reply),
                    Err(e) => tracing::debug!(error = %e, "reused connection failed; retrying on a new one"),
                }
            }
            let conn = self.connect().await?;
            self.send(conn, path).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout { addr: self.addr, timeout: self.timeout }),
        }
    }

    async fn take_idle(&self) -> Option<SendRequest<Empty<Bytes>>> {
        loop {
            let mut conn = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()?;
            if !conn.is_closed() && conn.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, ClientError> {
        let stream =
            TcpStream::connect(self.addr).await.map_err(|source| ClientError::Connect { addr: self.addr, source })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http { addr: self.addr, reason: e.to_string() })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn send(&self, mut conn: SendRequest<Empty<Bytes>>, path: &str) -> Result<Reply, ClientError> {
        let http_err = |reason: String| ClientError::Http { addr: self.addr, reason };
        let req = Request::get(path)
            .header(header::HOST, self.host.as_str())
            .body(Empty::new())
            .map_err(|e| http_err(e.to_string()))?;
        let rsp = conn.send_request(req).await.map_err(|e| http_err(e.to_string()))?;
        let status = rsp.status();
        let closing =
            rsp.headers().get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = Limited::new(rsp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| http_err(format!("reading the body: {e}")))?
            .to_bytes();
        if !closing {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
        Ok(Reply { status, body })
    }
}

/// One `GET` on a fresh connection (readiness probes).
pub async fn get_once(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Reply, ClientError> {
    Pool::new(addr, addr.to_string(), timeout).get(path).await
}
