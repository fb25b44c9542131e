//! A small load generator of new TCP connections, for the cost of opening
//! one: each connection sends one HTTP/1.0 request with `Connection: close`
//! and reads the response to EOF, so it lives for exactly one exchange.
//!
//! Through the mesh the target service is opaque TCP, so each of these
//! becomes a new proxy-to-proxy connection (and, with identity, a new mTLS
//! handshake) instead of a request on a pooled one.

use super::loadgen::Mode;
use super::parse::{self, Sample, percentile};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The name used in reports.
pub const TOOL: &str = "xtask tcp client";
/// One connection gives up after this long.
const CONN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response read; nginx's is about 150 bytes.
const MAX_RESPONSE: u64 = 64 * 1024;
/// Open loop: connections in flight beyond this are not started but counted
/// as failed, so an overloaded path cannot exhaust file descriptors.
const MAX_IN_FLIGHT: usize = 2048;
/// A closed-loop worker pauses this long after a failure instead of spinning
/// on a refused port.
const FAILURE_PAUSE: Duration = Duration::from_millis(10);

/// One run of the connection load generator.
#[derive(Debug, Clone, Copy)]
pub struct ConnLoad {
    /// Fixed: new connections per second, each started on schedule whether
    /// or not earlier ones have finished; max: `workers` connections back to
    /// back each.
    pub mode: Mode,
    /// Concurrent workers (max rate).
    pub workers: u32,
    /// Measurement time.
    pub duration: Duration,
}

/// What a run measured, and the first failure for diagnosis.
#[derive(Debug, Clone, Default)]
pub struct ConnReport {
    /// Connections completed with a 200, per second, and their latency.
    pub sample: Sample,
    /// Why the first failed connection failed.
    pub first_error: Option<String>,
}

/// Outcomes gathered by one worker (or the whole run).
#[derive(Debug, Default)]
struct Tally {
    micros: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, result: Result<(), String>, started: Instant) {
        match result {
            Ok(()) => self.micros.push(started.elapsed().as_secs_f64() * 1e6),
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, why: String) {
        self.errors += 1;
        self.first_error.get_or_insert(why);
    }

    fn merge(&mut self, other: Tally) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Runs `load` against `target` on a single-threaded runtime (like the other
/// load generators, which run one thread).
pub fn run(load: &ConnLoad, target: SocketAddr) -> anyhow::Result<ConnReport> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = std::time::Instant::now();
    let mut tally = runtime.block_on(async {
        match load.mode {
            Mode::Fixed(rate) => open_loop(target, rate, load.duration).await,
            Mode::Max => closed_loop(target, load.workers.max(1), load.duration).await,
        }
    });
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    tally.micros.sort_by(f64::total_cmp);
    let ok = tally.micros.len() as u64;
    let sample = Sample {
        ok,
        errors: tally.errors,
        rps: ok as f64 / elapsed,
        p50_us: percentile(&tally.micros, 0.50),
        p90_us: percentile(&tally.micros, 0.90),
        p99_us: percentile(&tally.micros, 0.99),
    };
    Ok(ConnReport { sample, first_error: tally.first_error })
}

/// `workers` tasks, each opening its next connection when the last one closed.
async fn closed_loop(target: SocketAddr, workers: u32, duration: Duration) -> Tally {
    let deadline = Instant::now() + duration;
    let request = Arc::new(request_for(target));
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let request = request.clone();
        set.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let started = Instant::now();
                let result = exchange(target, &request).await;
                let failed = result.is_err();
                tally.record(result, started);
                if failed {
                    tokio::time::sleep(FAILURE_PAUSE).await;
                }
            }
            tally
        });
    }
    join_all(set).await
}

/// A new connection every 1/`rate` s, whatever the ones before are doing,
/// so a slow path cannot slow the offered load down (no coordinated
/// omission). Latency counts from the connection's actual start: tokio's
/// timer works in milliseconds, and its lag is the generator's, not the path's.
async fn open_loop(target: SocketAddr, rate: u32, duration: Duration) -> Tally {
    let rate = f64::from(rate.max(1));
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let request = Arc::new(request_for(target));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tally = Tally::default();
    let mut set = JoinSet::new();
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        while let Some(done) = set.try_join_next() {
            collect(&mut tally, done);
        }
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            tally.fail(format!("more than {MAX_IN_FLIGHT} connections in flight: the path cannot keep up"));
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (request, in_flight) = (request.clone(), in_flight.clone());
        set.spawn(async move {
            let mut one = Tally::default();
            let started = Instant::now();
            one.record(exchange(target, &request).await, started);
            in_flight.fetch_sub(1, Ordering::Relaxed);
            one
        });
    }
    tally.merge(join_all(set).await);
    tally
}

async fn join_all(mut set: JoinSet<Tally>) -> Tally {
    let mut tally = Tally::default();
    while let Some(done) = set.join_next().await {
        collect(&mut tally, done);
    }
    tally
}

fn collect(tally: &mut Tally, done: Result<Tally, tokio::task::JoinError>) {
    match done {
        Ok(t) => tally.merge(t),
        Err(e) => tally.fail(format!("a connection task failed: {e}")),
    }
}

fn request_for(target: SocketAddr) -> Vec<u8> {
    format!("GET / HTTP/1.0\r\nHost: {target}\r\nUser-Agent: xtask-bench\r\nConnection: close\r\n\r\n").into_bytes()
}

/// One connection: connect, send `request`, read to EOF, expect a 200.
async fn exchange(target: SocketAddr, request: &[u8]) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(target).await.map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("set TCP_NODELAY: {e}"))?;
        stream.write_all(request).await.map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::with_capacity(512);
        (&mut stream).take(MAX_RESPONSE).read_to_end(&mut response).await.map_err(|e| format!("read: {e}"))?;
        match parse::http_status(&response) {
            Some(200) => Ok(()),
            Some(status) => Err(format!("answered {status}")),
            None if response.is_empty() => Err("closed without a response".to_string()),
            None => {
                Err(format!("not an HTTP response: {:?}", String::from_utf8_lossy(&response[..response.len().min(64)])))
            }
        }
    };
    match tokio::time::timeout(CONN_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no complete response within {CONN_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A server answering each connection like nginx would, or with `status`.
    fn server(status: u16) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        });
        addr
    }

    #[test]
    fn closed_loop_counts_connections() {
        let load = ConnLoad { mode: Mode::Max, workers: 2, duration: Duration::from_millis(300) };
        let report = run(&load, server(200)).expect("runs");
        assert!(report.sample.ok > 0, "{report:?}");
        assert_eq!(report.sample.errors, 0, "{report:?}");
        assert!(report.sample.p50_us.is_some() && report.sample.p99_us >= report.sample.p50_us);
    }

    #[test]
    fn open_loop_keeps_its_rate() {
        let load = ConnLoad { mode: Mode::Fixed(100), workers: 1, duration: Duration::from_millis(500) };
        let report = run(&load, server(200)).expect("runs");
        assert_eq!(report.sample.ok, 50, "{report:?}");
    }

    #[test]
    fn failures_are_counted_with_a_reason() {
        let load = ConnLoad { mode: Mode::Fixed(50), workers: 1, duration: Duration::from_millis(200) };
        let report = run(&load, server(503)).expect("runs");
        assert_eq!((report.sample.ok, report.sample.errors), (0, 10));
        assert_eq!(report.first_error.as_deref(), Some("answered 503"));
        assert_eq!(report.sample.p50_us, None);
    }
}
