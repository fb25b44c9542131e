//! The tracing scenario's OTLP/gRPC receiver: `mesh-test-app otlp-sink`, a
//! child process that counts the spans the proxies export and discards them,
//! so the bench measures the proxies' cost of tracing and not a collector's.
//! xtask reads the count over HTTP (`GET /spans`), so it needs no gRPC.

use crate::procs::{free_ports, http_get, spawn, wait_for};
use anyhow::{Context, bail};
use mesh_process::Child;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the sink may take to start.
const STARTUP: Duration = Duration::from_secs(20);
/// Timeout of one count request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The receiver, killed when dropped.
#[derive(Debug)]
pub struct Collector {
    proc: Child,
    grpc: SocketAddr,
    counts: SocketAddr,
}

impl Collector {
    /// Starts `test_app otlp-sink` on two free loopback ports, logging to
    /// `dir`, and waits until it answers.
    pub fn start(test_app: &Path, dir: &Path) -> anyhow::Result<Self> {
        let ports = free_ports(2)?;
        let (grpc, counts) =
            (SocketAddr::from(([127, 0, 0, 1], ports[0])), SocketAddr::from(([127, 0, 0, 1], ports[1])));
        let args =
            ["otlp-sink".to_string(), "--listen".into(), grpc.to_string(), "--counts".into(), counts.to_string()];
        let proc = spawn("otlp-sink", test_app, &args, &[], dir)?;
        wait_for("the OTLP sink", STARTUP, &[&proc], || spans_at(counts).err().map(|e| format!("{e:#}")))?;
        Ok(Self { proc, grpc, counts })
    }

    /// The URL to give `mesh-proxy --trace-collector`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Spans received so far.
    pub fn spans(&self) -> anyhow::Result<u64> {
        spans_at(self.counts)
            .with_context(|| format!("the OTLP sink stopped answering; end of its log:\n{}", self.proc.log_tail(10)))
    }

    /// Waits until no span has arrived for `quiet` (exporters send what they
    /// hold right away, or within a second when idle), at most `limit`, and
    /// returns the spans received so far.
    pub fn settle(&self, quiet: Duration, limit: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + limit;
        let mut last = self.spans()?;
        let mut since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.spans()?;
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        Ok(last)
    }
}

/// `GET /spans` on the sink's count listener.
fn spans_at(counts: SocketAddr) -> anyhow::Result<u64> {
    match http_get(counts, "/spans", REQUEST_TIMEOUT)? {
        (200, body) => parse_count(&body),
        (status, body) => bail!("GET {counts}/spans answered {status} {}", body.trim()),
    }
}

fn parse_count(body: &str) -> anyhow::Result<u64> {
    body.trim().parse().with_context(|| format!("the OTLP sink's count {:?} is not a number", body.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_decimal_lines() {
        assert_eq!(parse_count("6\n").ok(), Some(6));
        assert!(parse_count("six\n").is_err());
        assert!(parse_count("").is_err());
    }
}
