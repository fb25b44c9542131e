//! Access logs: one JSON line per request or TCP connection, written by a
//! background task. Bounded in cost: lines go through a bounded queue and
//! are dropped (and counted) rather than slowing traffic down.

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use std::io::Write;
use tokio::sync::mpsc;

/// Where access logs go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to.
    File(std::path::PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => Sink::Stdout,
            "stderr" => Sink::Stderr,
            path => Sink::File(path.into()),
        })
    }
}

/// One access log line.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// RFC 3339 time the request (or connection) started.
    pub time: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `http` or `tcp`.
    pub kind: &'static str,
    /// The client's identity (inbound mTLS), or empty.
    pub client_id: String,
    /// The server's identity (outbound mTLS), or empty.
    pub server_id: String,
    /// The client's address.
    pub client_addr: String,
    /// The target (service authority or app address).
    pub target: String,
    /// HTTP method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP authority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// HTTP path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// gRPC status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Latency in milliseconds (to response headers, or connection duration).
    pub latency_ms: f64,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// The route that matched, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The authorization decision, if any (`allow by <policy>/<rule>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<String>,
}

/// A running access log.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts writing to `sink`.
    pub fn start(sink: Sink, dropped: Counter) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match &sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::Stderr => Box::new(std::io::stderr()),
            Sink::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
        };
        let (tx, mut rx) = mpsc::channel::<Entry>(8192);
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut buf = std::io::BufWriter::new(&mut out);
            while let Some(e) = rx.blocking_recv() {
                let _ = serde_json::to_writer(&mut buf, &e);
                let _ = buf.write_all(b"\n");
                if rx.is_empty() {
                    let _ = buf.flush();
                }
            }
            let _ = buf.flush();
        })?;
        Ok(Self { tx, dropped })
    }

    /// Queues a line; drops it (counted) if the writer is behind.
    pub fn log(&self, e: Entry) {
        if self.tx.try_send(e).is_err() {
            self.dropped.inc();
        }
    }
}

/// The current time in RFC 3339 (UTC, millisecond precision).
pub fn now_rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_time() {
        assert_eq!(now_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_764_115_200_123);
        assert_eq!(now_rfc3339(t), "2025-11-26T00:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(now_rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
