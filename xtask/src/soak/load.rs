//! The soak's load generator: HTTP/1.1 `GET /` at a fixed rate over plain
//! sockets to the client proxy's outbound listener.
//!
//! Open loop: each of `connections` workers sends its share of the rate on a
//! fixed schedule (request `i` of worker `k` is due at `(i * connections + k)
//! / rate` seconds), whatever earlier requests took; latency counts from the
//! due time, so a stall shows as latency rather than as missing requests.
//! Every failed attempt is counted and never retried: a refused connect, a
//! reset, a timeout, a malformed response or a status other than 200. A
//! failed connection is dropped and the next request opens a new one.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait for a connect or for a whole response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Failure messages kept for the report (every failure is counted).
const KEPT_FAILURES: usize = 20;
/// A response head larger than this is malformed.
const MAX_HEAD: usize = 16 * 1024;

/// What the load has seen so far; shared with the workers.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Requests attempted.
    pub sent: AtomicU64,
    /// Requests answered 200.
    pub ok: AtomicU64,
    /// Failed attempts.
    pub failed: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Latencies (µs from the due time) since the last [`LoadStats::drain_latencies`].
    latencies_us: Vec<u32>,
    /// Answers per replica (the app's `x-replica` header).
    replicas: BTreeMap<String, u64>,
    /// The first failures, with when they happened (seconds into the load).
    failures: Vec<(f64, String)>,
}

impl LoadStats {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latencies recorded since the last call, in µs.
    pub fn drain_latencies(&self) -> Vec<u32> {
        std::mem::take(&mut self.inner().latencies_us)
    }

    /// Answers per replica so far.
    pub fn replicas(&self) -> BTreeMap<String, u64> {
        self.inner().replicas.clone()
    }

    /// The first failures (at most [`KEPT_FAILURES`]).
    pub fn failures(&self) -> Vec<(f64, String)> {
        self.inner().failures.clone()
    }

    fn record_ok(&self, latency: Duration, replica: Option<String>) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner();
        inner.latencies_us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        *inner.replicas.entry(replica.unwrap_or_else(|| "(no x-replica)".into())).or_default() += 1;
    }

    fn record_failure(&self, at: f64, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner();
        if inner.failures.len() < KEPT_FAILURES {
            inner.failures.push((at, why));
        }
    }
}

/// A running load; [`Load::stop`] ends it.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    /// What it has seen.
    pub stats: Arc<LoadStats>,
    /// When it started (request 0 was due).
    pub started: Instant,
}

impl Load {
    /// Starts `connections` workers sending `rate` requests per second in
    /// total to `target`.
    pub fn start(target: SocketAddr, rate: u32, connections: u32) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoadStats::default());
        let started = Instant::now();
        let period = Duration::from_secs_f64(f64::from(connections) / f64::from(rate));
        let workers = (0..connections)
            .map(|k| {
                let first = started + Duration::from_secs_f64(f64::from(k) / f64::from(rate));
                let (stop, stats) = (stop.clone(), stats.clone());
                std::thread::Builder::new()
                    .name(format!("soak-load-{k}"))
                    .spawn(move || worker(target, first, period, started, &stop, &stats))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { stop, workers, stats, started })
    }

    /// Stops scheduling requests and waits for those in flight.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.join();
        }
    }
}

fn worker(
    target: SocketAddr,
    first: Instant,
    period: Duration,
    started: Instant,
    stop: &AtomicBool,
    stats: &LoadStats,
) {
    let mut conn: Option<TcpStream> = None;
    let mut due = first;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if due > now {
            // Sleep in short steps so that stopping is prompt.
            std::thread::sleep((due - now).min(Duration::from_millis(100)));
            continue;
        }
        stats.sent.fetch_add(1, Ordering::Relaxed);
        match request(&mut conn, target) {
            Ok(answer) if answer.status == 200 => stats.record_ok(due.elapsed(), answer.replica),
            Ok(answer) => stats.record_failure(
                started.elapsed().as_secs_f64(),
                format!("status {} from replica {}", answer.status, answer.replica.as_deref().unwrap_or("?")),
            ),
            Err(e) => {
                conn = None;
                stats.record_failure(started.elapsed().as_secs_f64(), e);
            }
        }
        due += period;
    }
}

/// One request on `conn` (opened first if there is none); leaves `conn`
/// `None` when the server will close it.
fn request(conn: &mut Option<TcpStream>, target: SocketAddr) -> Result<Answer, String> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let fresh = conn.is_none();
    let stream = match conn {
        Some(s) => s,
        None => {
            let s = TcpStream::connect_timeout(&target, REQUEST_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
            let _ = s.set_nodelay(true);
            conn.insert(s)
        }
    };
    let what = if fresh { "new connection" } else { "reused connection" };
    stream.set_write_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: soak.default\r\nUser-Agent: xtask-soak\r\n\r\n")
        .map_err(|e| format!("write ({what}): {e}"))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        match parse_response(&buf) {
            Ok(Some(answer)) => {
                if answer.close {
                    *conn = None;
                }
                return Ok(answer);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("malformed response ({what}): {e}")),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timed out after {REQUEST_TIMEOUT:?} ({what})"));
        }
        let s = conn.as_mut().ok_or("connection gone")?;
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("closed by the proxy after {} response bytes ({what})", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read ({what}): {e}")),
        }
    }
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Its status code.
    pub status: u16,
    /// Its `x-replica` header.
    pub replica: Option<String>,
    /// Whether the connection ends with it.
    pub close: bool,
}

/// Parses an HTTP/1.1 response to a GET from the start of `buf`: `Ok(None)`
/// while incomplete. Bodies are framed by `content-length` or chunked
/// encoding; anything else (or a second response's bytes) is an error,
/// because the load never pipelines.
pub fn parse_response(buf: &[u8]) -> Result<Option<Answer>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err("response head too large".into()) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split(' ');
    let version = words.next().unwrap_or_default();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = words.next().and_then(|c| c.parse().ok()).ok_or(format!("bad status line {status_line:?}"))?;
    let (mut length, mut chunked, mut replica, mut close) = (None, false, None, version == "HTTP/1.0");
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(format!("bad header line {line:?}"))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(value.parse::<usize>().map_err(|_| format!("bad content-length {value:?}"))?)
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "x-replica" => replica = Some(value.to_string()),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body = &buf[end + 4..];
    let complete = match (chunked, length) {
        (true, _) => match body.windows(5).position(|w| w == b"0\r\n\r\n") {
            Some(p) if p + 5 == body.len() => true,
            Some(_) => return Err("bytes after the last chunk".into()),
            None => false,
        },
        (false, Some(n)) if body.len() > n => return Err(format!("{} bytes after a {n}-byte body", body.len() - n)),
        (false, Some(n)) => body.len() == n,
        (false, None) if status == 204 || status == 304 => true,
        (false, None) => return Err("neither content-length nor chunked encoding".into()),
    };
    Ok(complete.then_some(Answer { status, replica, close }))
}

#[cfg(test)]
mod tests;
