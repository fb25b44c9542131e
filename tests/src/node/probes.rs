//! Probes from the node into a pod's IP (what a kubelet does: the node's
//! network, the pod's address), and the thresholds that turn attempts into
//! a verdict.

use super::plan::{ProbeAction, ProbeSpec};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One attempt: `Ok` passes, `Err` says why not.
pub async fn attempt(ip: IpAddr, spec: &ProbeSpec) -> Result<(), String> {
    let port = match &spec.action {
        ProbeAction::Http { port, .. } | ProbeAction::Tcp { port } => *port,
    };
    let addr = SocketAddr::new(ip, port);
    let run = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let ProbeAction::Http { path, .. } = &spec.action else { return Ok(()) };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = stream.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        match http_status(&head) {
            Some(code) if (200..400).contains(&code) => Ok(()),
            Some(code) => Err(format!("HTTP probe failed with statuscode: {code}")),
            None => Err("no HTTP status line".into()),
        }
    };
    match tokio::time::timeout(spec.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", spec.timeout)),
    }
}

/// The status code of an HTTP/1 response's first line.
pub fn http_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// A probe's verdict over time: consecutive results against the thresholds.
#[derive(Debug, Clone)]
pub struct Tracker {
    spec: ProbeSpec,
    next: Instant,
    successes: u32,
    failures: u32,
    passing: bool,
    /// The last failure's reason.
    pub last_error: Option<String>,
}

/// What one result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The threshold of successes was reached.
    Passed,
    /// The threshold of failures was reached.
    Failed,
    /// Nothing decided yet or no change.
    Unchanged,
}

impl Tracker {
    /// Starts counting when the container starts (`now`); not passing.
    pub fn new(spec: ProbeSpec, now: Instant) -> Self {
        let next = now + spec.initial_delay;
        Self { spec, next, successes: 0, failures: 0, passing: false, last_error: None }
    }

    /// Whether an attempt is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// The probe's definition.
    pub fn spec(&self) -> &ProbeSpec {
        &self.spec
    }

    /// Whether it passes now.
    pub fn passing(&self) -> bool {
        self.passing
    }

    /// Records an attempt made at `now`: the next is one period later.
    pub fn record(&mut self, now: Instant, result: Result<(), String>) -> Verdict {
        self.next = now + self.spec.period;
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if !self.passing && self.successes >= self.spec.success_threshold {
                    self.passing = true;
                    return Verdict::Passed;
                }
            }
            Err(e) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                self.last_error = Some(e);
                if self.failures >= self.spec.failure_threshold {
                    self.failures = 0;
                    self.passing = false;
                    return Verdict::Failed;
                }
            }
        }
        Verdict::Unchanged
    }
}

/// Period to poll probes when none is due sooner.
pub const TICK: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action: ProbeAction::Tcp { port: 1 },
            initial_delay: Duration::from_secs(2),
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    /// Catches a status line misread (a 500 taken for a pass, or a body's
    /// digits taken for the code).
    #[test]
    fn status_lines() {
        assert_eq!(http_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(http_status(b"HTTP/1.0 503 Service Unavailable\r\nx: 200\r\n"), Some(503));
        assert_eq!(http_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(http_status(b""), None);
    }

    /// Catches thresholds ignored: one failure must not fail a probe whose
    /// threshold is 3, and the first attempt waits for the initial delay.
    #[test]
    fn thresholds_and_initial_delay() {
        let t0 = Instant::now();
        let mut t = Tracker::new(spec(2, 3), t0);
        assert!(!t.due(t0 + Duration::from_secs(1)));
        assert!(t.due(t0 + Duration::from_secs(2)));
        assert_eq!(t.record(t0, Ok(())), Verdict::Unchanged);
        assert_eq!(t.record(t0, Ok(())), Verdict::Passed);
        assert!(t.passing());
        assert_eq!(t.record(t0, Err("x".into())), Verdict::Unchanged);
        assert_eq!(t.record(t0, Err("x".into())), Verdict::Unchanged);
        assert!(t.passing(), "two failures of three keep it passing");
        assert_eq!(t.record(t0, Err("x".into())), Verdict::Failed);
        assert!(!t.passing());
        assert!(!t.due(t0 + Duration::from_millis(500)), "next attempt one period later");
    }
}
