//! A small HTTP/1.1 client for admin ports: one `GET` per connection,
//! either read whole (with a size limit) or streamed line by line (`/tap`).

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::fmt;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Largest whole body read (a big proxy's `/metrics` fits many times).
const MAX_BODY: usize = 16 << 20;
/// Longest line accepted from a stream.
const MAX_LINE: usize = 1 << 20;

/// An admin server's address: `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr {
    /// A name or an IP (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Addr {
    /// Parses `http://host:port[/]`, `host:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<Addr, String> {
        let t = s.trim();
        if t.starts_with("https://") {
            return Err(format!("{s:?}: admin ports speak plain HTTP; use http://"));
        }
        let rest = t.strip_prefix("http://").unwrap_or(t);
        let authority = rest.split('/').next().unwrap_or_default();
        let bad = || format!("invalid address {s:?}: expected host:port or http://host:port");
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, port) = v6.split_once("]:").ok_or_else(bad)?;
                (host, port)
            }
            None => authority.rsplit_once(':').ok_or_else(bad)?,
        };
        if host.is_empty() || (host.contains(':') && !authority.starts_with('[')) {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(Addr { host: host.to_string(), port })
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where.
        addr: Addr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("GET http://{addr}{path} failed: {reason}")]
    Http {
        /// Where.
        addr: Addr,
        /// The path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// No answer in time.
    #[error("GET http://{addr}{path}: no answer within {timeout:?}")]
    Timeout {
        /// Where.
        addr: Addr,
        /// The path.
        path: String,
        /// The limit.
        timeout: Duration,
    },
    /// An answer other than 2xx.
    #[error("GET http://{addr}{path} answered {status}{detail}")]
    Status {
        /// Where.
        addr: Addr,
        /// The path.
        path: String,
        /// The status.
        status: StatusCode,
        /// `: ` and the start of the body (a proxy's 403 says what to do instead), or empty.
        detail: String,
    },
}

/// Opens a connection and sends `GET path`; returns the response head and
/// the task driving the connection.
async fn send(addr: &Addr, path: &str) -> Result<(http::Response<Incoming>, JoinHandle<()>), ClientError> {
    let stream = TcpStream::connect((addr.host.as_str(), addr.port))
        .await
        .map_err(|source| ClientError::Connect { addr: addr.clone(), source })?;
    let _ = stream.set_nodelay(true);
    let http_err = |reason: String| ClientError::Http { addr: addr.clone(), path: path.to_string(), reason };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| http_err(e.to_string()))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "admin connection ended with an error");
        }
    });
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| http_err(e.to_string()))?;
    let rsp = match sender.send_request(req).await {
        Ok(rsp) => rsp,
        Err(e) => {
            driver.abort();
            return Err(http_err(e.to_string()));
        }
    };
    if !rsp.status().is_success() {
        let status = rsp.status();
        // The first line of a short explanation, if one comes at once.
        let body = Limited::new(rsp.into_body(), 4096).collect();
        let text = match tokio::time::timeout(Duration::from_secs(1), body).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).lines().next().unwrap_or_default().trim().to_string(),
            _ => String::new(),
        };
        driver.abort();
        let detail = if text.is_empty() { text } else { format!(": {text}") };
        return Err(ClientError::Status { addr: addr.clone(), path: path.to_string(), status, detail });
    }
    Ok((rsp, driver))
}

/// `GET path`, the whole body, within `timeout`.
pub async fn get(addr: &Addr, path: &str, timeout: Duration) -> Result<Bytes, ClientError> {
    let exchange = async {
        let (rsp, driver) = send(addr, path).await?;
        let body = Limited::new(rsp.into_body(), MAX_BODY).collect().await;
        driver.abort();
        body.map(|b| b.to_bytes()).map_err(|e| ClientError::Http {
            addr: addr.clone(),
            path: path.to_string(),
            reason: format!("reading the body: {e}"),
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { addr: addr.clone(), path: path.to_string(), timeout }),
    }
}

/// `GET path` as JSON.
pub async fn get_json(addr: &Addr, path: &str, timeout: Duration) -> Result<serde_json::Value, String> {
    let body = get(addr, path, timeout).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("http://{addr}{path} is not JSON: {e}"))
}

/// A streaming response read line by line.
#[derive(Debug)]
pub struct Lines {
    body: Incoming,
    buf: BytesMut,
    driver: JoinHandle<()>,
    done: bool,
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Lines {
    /// `GET path` whose response is read as it comes; connecting and the
    /// response head must take less than `timeout`.
    pub async fn open(addr: &Addr, path: &str, timeout: Duration) -> Result<Lines, ClientError> {
        let (rsp, driver) = tokio::time::timeout(timeout, send(addr, path))
            .await
            .map_err(|_| ClientError::Timeout { addr: addr.clone(), path: path.to_string(), timeout })??;
        Ok(Lines { body: rsp.into_body(), buf: BytesMut::new(), driver, done: false })
    }

    /// The next line (without its newline); `None` at the end of the body.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if let Some(line) = split_line(&mut self.buf) {
                return Ok(Some(line));
            }
            if self.done {
                return Ok((!self.buf.is_empty()).then(|| self.buf.split().freeze()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(format!("a line longer than {MAX_LINE} bytes"));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => self.done = true,
            }
        }
    }
}

/// Takes the first complete line out of `buf`, dropping its `\n` (and `\r`).
fn split_line(buf: &mut BytesMut) -> Option<Bytes> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let mut line = buf.split_to(end + 1);
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    Some(line.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let a = |host: &str, port| Addr { host: host.to_string(), port };
        assert_eq!(Addr::parse("http://127.0.0.1:9990"), Ok(a("127.0.0.1", 9990)));
        assert_eq!(Addr::parse("http://127.0.0.1:9990/proxies"), Ok(a("127.0.0.1", 9990)));
        assert_eq!(Addr::parse("localhost:4191"), Ok(a("localhost", 4191)));
        assert_eq!(Addr::parse("[::1]:4191"), Ok(a("::1", 4191)));
        assert_eq!(Addr::parse("http://[::1]:4191/").map(|a| a.to_string()), Ok("[::1]:4191".to_string()));
        for bad in ["", "127.0.0.1", "host:", ":80", "host:0", "host:99999", "::1:80", "https://x:1", "[::1]"] {
            assert!(Addr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lines_split_on_newlines() {
        let mut buf = BytesMut::from(&b"one\r\ntwo\nthr"[..]);
        assert_eq!(split_line(&mut buf).as_deref(), Some(&b"one"[..]));
        assert_eq!(split_line(&mut buf).as_deref(), Some(&b"two"[..]));
        assert_eq!(split_line(&mut buf), None);
        assert_eq!(&buf[..], b"thr");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_whole_and_streamed_bodies() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let rsp: &[u8] = if req.starts_with("GET /missing ") {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
                    } else if req.starts_with("GET /tap ") {
                        b"HTTP/1.1 403 Forbidden\r\ncontent-length: 22\r\n\r\nonly from loopback\nmore"
                    } else if req.starts_with("GET /stream ") {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\na\nb\n\r\n2\r\nc\n\r\n0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
                    };
                    let _ = s.write_all(rsp).await;
                });
            }
        });
        let addr = Addr { host: "127.0.0.1".into(), port };
        let t = Duration::from_secs(5);
        assert_eq!(get_json(&addr, "/x", t).await, Ok(serde_json::json!({})));
        let err = get(&addr, "/missing", t).await.expect_err("404");
        assert!(err.to_string().contains("404"), "{err}");
        // A refusal's explanation reaches the user (its first line).
        let err = get(&addr, "/tap", t).await.expect_err("403");
        assert!(err.to_string().ends_with("answered 403 Forbidden: only from loopback"), "{err}");
        let mut lines = Lines::open(&addr, "/stream", t).await.expect("stream");
        let mut got = Vec::new();
        while let Some(l) = lines.next_line().await.expect("line") {
            got.push(String::from_utf8_lossy(&l).to_string());
        }
        assert_eq!(got, ["a", "b", "c"]);
    }
}
