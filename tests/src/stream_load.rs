//! Streaming gRPC load (`mesh-test-app grpc-stream-load`, run by `cargo
//! xtask bench --protocol grpc-stream`): N bidirectional `Echo/Bidi`
//! streams, each on its own HTTP/2 connection, carrying small messages
//! either at a fixed total rate (open loop) or as fast as each stream's
//! echoes come back (closed loop, one message in flight per stream, like
//! the unary table's `h2load -m1`).
//!
//! At a fixed rate every message has an intended send time fixed before the
//! run ([`intended_offset`]); its latency runs from that time to its echo, not
//! from when it was actually sent, so a path that stalls is charged for every
//! message it held back (no coordinated omission). Failures are counted, not
//! hidden: a stream that cannot open or breaks counts as an error and is
//! reopened, each message sent but never echoed (or echoed wrong) counts as an
//! error, so a broken path reports errors instead of looking fast.

use crate::pb::Msg;
use crate::pb::echo_client::EchoClient;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// How long after the end of the run echoes of messages already sent may
/// still arrive before those messages count as lost.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long a stream waits before reopening after an error (a broken path
/// must not turn into a busy loop).
const RETRY: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// e.g. `http://127.0.0.1:50051`.
    pub target: String,
    /// Concurrent streams (one connection each).
    pub streams: u32,
    /// Messages per second over all streams; `None`: closed loop, max rate.
    pub rate: Option<u32>,
    /// Measurement time (sends stop then; echoes may arrive for [`GRACE`] more).
    pub duration: Duration,
    /// Text of each message.
    pub text: String,
}

/// When stream `k` of `streams` intends to send its `i`-th message, from the
/// start of the run, at `rate` messages per second in total: message number
/// `i * streams + k` of one evenly spaced sequence, so the streams interleave
/// and the total rate is even (not `streams` messages in a burst).
pub fn intended_offset(rate: u32, streams: u32, k: u32, i: u64) -> Duration {
    let n = u128::from(i) * u128::from(streams) + u128::from(k);
    let nanos = n * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The `q`-th percentile (0 < q ≤ 100) of `sorted` (ascending), by nearest
/// rank: the smallest value with at least q% of the values at or below it.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What a run (or one stream of it) saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Messages echoed correctly.
    pub ok: u64,
    /// Streams that failed to open or broke (status, connection error, early end).
    pub stream_errors: u64,
    /// Echoes with the wrong text or sequence number.
    pub mismatched: u64,
    /// Messages sent and never echoed (a broken stream's in-flight messages,
    /// or no echo within [`GRACE`] after the end).
    pub lost: u64,
    /// Messages scheduled before the end but not sent by then (the load
    /// generator or the path fell behind the fixed rate; not failures).
    pub behind: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Each echoed message's latency, in µs.
    pub latencies_us: Vec<u64>,
}

impl Outcome {
    fn error(&mut self, e: String) {
        self.stream_errors += 1;
        self.first_error.get_or_insert(e);
    }

    /// Adds another stream's outcome to this one.
    pub fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.stream_errors += other.stream_errors;
        self.mismatched += other.mismatched;
        self.lost += other.lost;
        self.behind += other.behind;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_us.extend(other.latencies_us);
    }

    /// Failures: streams that failed plus messages not echoed correctly.
    pub fn errors(&self) -> u64 {
        self.stream_errors + self.mismatched + self.lost
    }

    /// The run's report as JSON (what `cargo xtask bench` parses).
    pub fn json(&self, config: &Config) -> serde_json::Value {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let secs = config.duration.as_secs_f64();
        serde_json::json!({
            "mode": if config.rate.is_some() { "fixed_rate" } else { "max_rate" },
            "rate": config.rate,
            "streams": config.streams,
            "duration_s": secs,
            "ok": self.ok,
            "errors": self.errors(),
            "stream_errors": self.stream_errors,
            "mismatched": self.mismatched,
            "lost": self.lost,
            "behind": self.behind,
            "messages_per_s": if secs > 0.0 { self.ok as f64 / secs } else { 0.0 },
            "latency_us": {
                "p50": percentile(&sorted, 50.0),
                "p90": percentile(&sorted, 90.0),
                "p99": percentile(&sorted, 99.0),
                "p999": percentile(&sorted, 99.9),
                "max": sorted.last(),
            },
            "first_error": self.first_error,
        })
    }
}

async fn connect(target: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(target.to_string()).map_err(|e| format!("bad target {target:?}: {e}"))?;
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))
}

/// Runs the load: connects every stream's connection, then starts the clock.
pub async fn run(config: &Config) -> Outcome {
    let streams = config.streams.max(1);
    let channels = futures_util::future::join_all((0..streams).map(|_| connect(&config.target))).await;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (k, channel) in channels.into_iter().enumerate() {
        let config = config.clone();
        tasks.spawn(async move { one_stream(config, k as u32, channel, start).await });
    }
    let mut total = Outcome::default();
    while let Some(part) = tasks.join_next().await {
        match part {
            Ok(part) => total.merge(part),
            Err(e) => total.error(format!("a stream task failed: {e}")),
        }
    }
    total
}

/// Stream `k`'s whole run: opens a stream, sends on it until the end or an
/// error, reopens after an error.
async fn one_stream(config: Config, k: u32, first: Result<Channel, String>, start: Instant) -> Outcome {
    let end = start + config.duration;
    let mut out = Outcome::default();
    let mut channel = first;
    // The index of this stream's next message (continues across reopenings,
    // so the fixed-rate schedule does too).
    let mut next: u64 = 0;
    while Instant::now() < end {
        let ch = match channel {
            Ok(ch) => ch,
            Err(e) => {
                out.error(e);
                tokio::time::sleep(RETRY).await;
                channel = connect(&config.target).await;
                continue;
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(256);
        let opened = tokio::time::timeout_at(
            end + GRACE,
            EchoClient::new(ch.clone()).bidi(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let responses = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                out.error(format!("cannot open a stream: {status}"));
                tokio::time::sleep(RETRY).await;
                channel = Ok(ch);
                continue;
            }
            Err(_) => {
                out.error("no response headers for a new stream".into());
                break;
            }
        };
        let result = match config.rate {
            Some(rate) => fixed_rate(&config, rate, k, &mut next, tx, responses, start, &mut out).await,
            None => closed_loop(&config, &mut next, tx, responses, start, &mut out).await,
        };
        match result {
            Ok(()) => break,
            Err(e) => {
                out.error(e);
                tokio::time::sleep(RETRY).await;
                channel = Ok(ch);
            }
        }
    }
    if let Some(rate) = config.rate {
        // Scheduled before the end, never sent: the run fell behind.
        let mut i = next;
        while intended_offset(rate, config.streams, k, i) < config.duration {
            out.behind += 1;
            i += 1;
        }
    }
    out
}

/// Checks an echo of message `seq`: the same text, the sequence number plus one.
fn echo_ok(m: &Msg, text: &str, seq: u64) -> bool {
    m.text == text && m.seq == seq + 1
}

/// Open loop on one stream: sends each message at its intended time (or
/// at once when late) while another future reads the echoes in order.
#[allow(clippy::too_many_arguments)]
async fn fixed_rate(
    config: &Config,
    rate: u32,
    k: u32,
    next: &mut u64,
    tx: tokio::sync::mpsc::Sender<Msg>,
    mut responses: tonic::Streaming<Msg>,
    start: Instant,
    out: &mut Outcome,
) -> Result<(), String> {
    let end = start + config.duration;
    let first = *next;
    let sent = Arc::new(AtomicU64::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    // The sender is a thread: tokio's timers tick in whole milliseconds, so a
    // task would send up to 1 ms late and that lateness would count as latency;
    // `thread::sleep` wakes within tens of µs.
    let mut sender = {
        let (sent, stop, text) = (sent.clone(), stop.clone(), config.text.clone());
        let (streams, start, end) = (config.streams, start.into_std(), end.into_std());
        tokio::task::spawn_blocking(move || {
            let mut i = first;
            loop {
                let at = start + intended_offset(rate, streams, k, i);
                let now = std::time::Instant::now();
                if at >= end || now >= end || stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(at.saturating_duration_since(now));
                // Blocks while the stream is backed up: later messages go out
                // late, and their latency still counts from their intended time.
                if tx.blocking_send(Msg { text: text.clone(), seq: i, replica: String::new() }).is_err() {
                    break;
                }
                i += 1;
                sent.store(i, Ordering::Relaxed);
            }
            // Dropping `tx` half-closes the stream: the server ends it once all is echoed.
        })
    };
    let mut expected = first;
    let receiver = async {
        while let Some(item) = responses.next().await {
            let m = item.map_err(|s| format!("stream error: {s}"))?;
            let now = Instant::now();
            if !echo_ok(&m, &config.text, expected) {
                out.mismatched += 1;
                out.first_error.get_or_insert_with(|| format!("message {expected}: unexpected echo {m:?}"));
            } else {
                let intended = start + intended_offset(rate, config.streams, k, expected);
                out.ok += 1;
                out.latencies_us.push(now.saturating_duration_since(intended).as_micros() as u64);
            }
            expected += 1;
        }
        Ok::<(), String>(())
    };
    let mut sending = true;
    let result = {
        tokio::pin!(receiver);
        let bounded = async {
            loop {
                tokio::select! {
                    _ = &mut sender, if sending => sending = false,
                    r = &mut receiver => {
                        // The sender stops only at the end: a clean end before it is the server's doing.
                        let ended_early = r.is_ok() && sending && Instant::now() < end;
                        break if ended_early { Err("the server ended the stream early".to_string()) } else { r };
                    }
                }
            }
        };
        tokio::time::timeout_at(end + GRACE, bounded)
            .await
            .unwrap_or_else(|_| Err(format!("no echo within {GRACE:?} after the end")))
    };
    // After an error, the sender stops at its next message (or when its send fails).
    stop.store(true, Ordering::Relaxed);
    drop(responses);
    if sending {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut sender).await;
    }
    let sent = sent.load(Ordering::Relaxed);
    out.lost += sent.saturating_sub(expected);
    *next = sent;
    result
}

/// Closed loop on one stream: sends a message, waits for its echo, repeats.
async fn closed_loop(
    config: &Config,
    next: &mut u64,
    tx: tokio::sync::mpsc::Sender<Msg>,
    mut responses: tonic::Streaming<Msg>,
    start: Instant,
    out: &mut Outcome,
) -> Result<(), String> {
    let end = start + config.duration;
    while Instant::now() < end {
        let seq = *next;
        let sent_at = Instant::now();
        if tx.send(Msg { text: config.text.clone(), seq, replica: String::new() }).await.is_err() {
            return Err("the stream closed before a message was sent".into());
        }
        *next += 1;
        let echo = tokio::time::timeout_at(end + GRACE, responses.next()).await;
        let m = match echo {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(s))) => {
                out.lost += 1;
                return Err(format!("stream error: {s}"));
            }
            Ok(None) => {
                out.lost += 1;
                return Err("the server ended the stream early".into());
            }
            Err(_) => {
                out.lost += 1;
                return Err(format!("no echo within {GRACE:?} after the end"));
            }
        };
        if echo_ok(&m, &config.text, seq) {
            out.ok += 1;
            out.latencies_us.push(sent_at.elapsed().as_micros() as u64);
        } else {
            out.mismatched += 1;
            out.first_error.get_or_insert_with(|| format!("message {seq}: unexpected echo {m:?}"));
        }
    }
    drop(tx);
    match tokio::time::timeout(GRACE, responses.next()).await {
        Ok(None) => Ok(()),
        Ok(Some(Ok(m))) => {
            out.mismatched += 1;
            Err(format!("an echo nobody asked for: {m:?}"))
        }
        Ok(Some(Err(s))) => Err(format!("stream error at the end: {s}")),
        Err(_) => Err("the stream did not end after the client closed it".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a schedule that bursts (all streams at the same instant), that
    /// gives each stream the total rate instead of its share, or drifts.
    #[test]
    fn the_schedule_is_even_over_all_streams() {
        // 1,000 msg/s over 4 streams: one message per ms in turn.
        let ms = |k, i| intended_offset(1000, 4, k, i).as_micros();
        assert_eq!([ms(0, 0), ms(1, 0), ms(2, 0), ms(3, 0), ms(0, 1)], [0, 1000, 2000, 3000, 4000]);
        // Each stream at a quarter of the rate.
        assert_eq!(ms(2, 250), 1_002_000);
        // No float drift after a long run: message 10^9 of 3 per second.
        assert_eq!(
            intended_offset(3, 1, 0, 1_000_000_000),
            Duration::from_secs(333_333_333) + Duration::from_nanos(333_333_333)
        );
        // A zero rate is not a division by zero.
        assert_eq!(intended_offset(0, 1, 0, 2), Duration::from_secs(2));
    }

    /// Catches an off-by-one rank (p50 of 1..=100 must be 50, not 51), a
    /// percentile of unsorted data, or a panic on few samples.
    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 90.0), Some(90));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 99.9), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[3, 9], 50.0), Some(3));
        assert_eq!(percentile(&[], 50.0), None);
    }

    /// Catches a report that hides failures (errors not counting lost or
    /// mismatched messages and failed streams), a wrong rate, or unsorted
    /// percentiles.
    #[test]
    fn the_report_counts_every_failure() {
        let config = Config {
            target: "http://x".into(),
            streams: 2,
            rate: Some(100),
            duration: Duration::from_secs(2),
            text: "t".into(),
        };
        let mut a = Outcome { ok: 3, latencies_us: vec![300, 100, 200], lost: 2, ..Outcome::default() };
        let b = Outcome {
            ok: 1,
            mismatched: 1,
            stream_errors: 1,
            first_error: Some("boom".into()),
            latencies_us: vec![900],
            ..Outcome::default()
        };
        a.merge(b);
        let j = a.json(&config);
        assert_eq!(j["ok"], 4);
        assert_eq!(j["errors"], 4, "{j}");
        assert_eq!(j["messages_per_s"], 2.0);
        assert_eq!(j["latency_us"]["p50"], 200);
        assert_eq!(j["latency_us"]["max"], 900);
        assert_eq!(j["first_error"], "boom");
        assert_eq!(j["mode"], "fixed_rate");
    }

    /// Catches an echo check that accepts the request itself (sequence not
    /// incremented) or another message's echo.
    #[test]
    fn echoes_are_checked() {
        let m = |text: &str, seq| Msg { text: text.into(), seq, replica: "r".into() };
        assert!(echo_ok(&m("a", 4), "a", 3));
        assert!(!echo_ok(&m("a", 3), "a", 3));
        assert!(!echo_ok(&m("b", 4), "a", 3));
    }
}
