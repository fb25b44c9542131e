//! Streaming gRPC through the paths of the `http` scenario
//! (`--protocol grpc-stream`): the test app's Echo service again, loaded by
//! `mesh-test-app grpc-stream-load` with bidirectional `Echo/Bidi` streams
//! (the service has no server-streaming method, and bidirectional streams
//! carry load both ways, as chat-like and streaming-RPC apps do): one stream
//! per connection, `--connections` of them, small messages at a fixed total
//! rate (open loop, latency from each message's intended send time) or one
//! in flight per stream at max rate. The unit is a message (and its echo).

use super::loadgen::Mode;
use super::parse::Sample;
use crate::procs;
use anyhow::{Context, bail};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The load generator's name in reports.
pub const TOOL: &str = "mesh-test-app grpc-stream-load";

/// What a streaming run reported beyond a [`Sample`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamReport {
    /// Messages, errors, rate and latency.
    pub sample: Sample,
    /// Streams that failed to open or broke.
    pub stream_errors: u64,
    /// Messages sent and never echoed.
    pub lost: u64,
    /// Echoes with the wrong content.
    pub mismatched: u64,
    /// Messages of a fixed-rate schedule not sent by the end (the path or
    /// the generator fell behind; the rate shows it, they are not failures).
    pub behind: u64,
    /// The first error the load generator saw.
    pub first_error: Option<String>,
}

/// Parses `grpc-stream-load`'s JSON report. Errors count streams that
/// failed plus messages not echoed correctly; percentiles are absent when
/// nothing was echoed.
pub fn parse(out: &str) -> anyhow::Result<StreamReport> {
    let v: Value = serde_json::from_str(out.trim()).context("grpc-stream-load did not print JSON")?;
    let count = |k: &str| v.get(k).and_then(Value::as_u64).with_context(|| format!("no {k:?} count in {v}"));
    let ok = count("ok")?;
    let pct = |p: &str| v.pointer(&format!("/latency_us/{p}")).and_then(Value::as_f64).filter(|_| ok > 0);
    let rps = v.get("messages_per_s").and_then(Value::as_f64).context("no \"messages_per_s\" in the report")?;
    let (stream_errors, lost, mismatched) = (count("stream_errors")?, count("lost")?, count("mismatched")?);
    let errors = count("errors")?.max(stream_errors + lost + mismatched);
    Ok(StreamReport {
        sample: Sample { ok, errors, rps, p50_us: pct("p50"), p90_us: pct("p90"), p99_us: pct("p99") },
        stream_errors,
        lost,
        mismatched,
        behind: v.get("behind").and_then(Value::as_u64).unwrap_or(0),
        first_error: v.get("first_error").and_then(Value::as_str).map(str::to_string),
    })
}

/// The test app's arguments for `mode` against `target`.
pub fn args(target: SocketAddr, mode: Mode, streams: u32, duration: Duration) -> Vec<String> {
    let mut a = vec![
        "grpc-stream-load".to_string(),
        "--target".into(),
        format!("http://{target}"),
        "--streams".into(),
        streams.max(1).to_string(),
        "--duration".into(),
        format!("{}s", duration.as_secs().max(1)),
    ];
    if let Mode::Fixed(rate) = mode {
        a.extend(["--rate".into(), rate.to_string()]);
    }
    a
}

/// Runs one streaming load against `target` (from inside network namespace
/// `netns` when given: the pods topology's client pod).
pub fn run(
    test_app: &Path,
    target: SocketAddr,
    mode: Mode,
    streams: u32,
    duration: Duration,
    netns: Option<&str>,
) -> anyhow::Result<StreamReport> {
    // In the pods topology, from inside the client pod.
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = procs::command(Path::new("ip"));
            c.args(["netns", "exec", ns]).arg(test_app);
            c
        }
        None => procs::command(test_app),
    };
    cmd.args(args(target, mode, streams, duration));
    let line = crate::cargo::display(&cmd);
    // The run, then up to 5 s of grace for late echoes, then slack.
    let out = procs::output_with_timeout(&mut cmd, duration + Duration::from_secs(30))
        .with_context(|| format!("`{line}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match parse(&stdout) {
        Ok(r) if out.status.success() => Ok(r),
        Ok(_) | Err(_) => {
            let why = parse(&stdout).err().map_or(String::new(), |e| format!("{e:#}; "));
            bail!(
                "`{line}` ({}) gave no usable report: {why}stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a parser that drops failures (a broken path must not read
    /// as a fast one), takes µs for ms, or reports percentiles of nothing.
    #[test]
    fn reports_are_parsed_with_their_failures() {
        let ok = r#"{"mode":"fixed_rate","rate":1000,"streams":16,"duration_s":3.0,"ok":2990,"errors":0,
            "stream_errors":0,"mismatched":0,"lost":0,"behind":0,"messages_per_s":996.7,
            "latency_us":{"p50":210,"p90":380,"p99":1200,"p999":4000,"max":5000},"first_error":null}"#;
        let r = parse(ok).expect("parses");
        assert_eq!(
            r.sample,
            Sample { ok: 2990, errors: 0, rps: 996.7, p50_us: Some(210.0), p90_us: Some(380.0), p99_us: Some(1200.0) }
        );
        assert_eq!(r.first_error, None);
        let broken = r#"{"ok":0,"errors":0,"stream_errors":12,"mismatched":1,"lost":30,"messages_per_s":0.0,
            "latency_us":{"p50":null,"p90":null,"p99":null},"first_error":"stream error: status: Unavailable"}"#;
        let r = parse(broken).expect("parses");
        assert_eq!((r.sample.ok, r.sample.errors, r.sample.p50_us), (0, 43, None));
        assert_eq!((r.stream_errors, r.lost, r.mismatched, r.behind), (12, 30, 1, 0));
        assert_eq!(r.first_error.as_deref(), Some("stream error: status: Unavailable"));
        assert!(parse("error: cannot connect").is_err());
        assert!(parse(r#"{"ok":1}"#).is_err(), "a report without its error counts is refused");
    }

    /// Catches a fixed-rate run sent without its rate (it would run at max
    /// rate) or a max-rate run with one.
    #[test]
    fn arguments_per_mode() {
        let t: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let fixed = args(t, Mode::Fixed(1000), 16, Duration::from_secs(3));
        assert_eq!(fixed[..3], ["grpc-stream-load", "--target", "http://127.0.0.1:9"]);
        assert!(fixed.windows(2).any(|w| w == ["--rate", "1000"]), "{fixed:?}");
        assert!(fixed.windows(2).any(|w| w == ["--streams", "16"]), "{fixed:?}");
        assert!(fixed.windows(2).any(|w| w == ["--duration", "3s"]), "{fixed:?}");
        assert!(!args(t, Mode::Max, 16, Duration::from_secs(3)).contains(&"--rate".to_string()));
    }
}
