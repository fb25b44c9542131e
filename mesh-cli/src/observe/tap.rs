//! `meshctl tap`: a live stream of the requests the proxies see, filtered,
//! one line each (or one JSON object per line), as they happen.

use super::proxies::Source;
use super::stream::{self, Event, Note, Query};
use crate::Output;
use anyhow::bail;
use clap::{Args, ValueEnum};
use std::io::Write as _;
use std::time::Duration;

/// Which side of the proxies to tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// Requests into the workloads.
    Inbound,
    /// Requests the workloads make.
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Flags of `meshctl tap`.
#[derive(Debug, Clone, Args)]
pub struct TapArgs {
    #[command(flatten)]
    source: Source,
    /// Only requests whose path starts with this.
    #[arg(long, value_name = "PREFIX")]
    path: Option<String>,
    /// Only this method.
    #[arg(long)]
    method: Option<String>,
    /// Only requests whose authority contains this.
    #[arg(long)]
    authority: Option<String>,
    /// Only these proxies: a workload (`books-0`) or a service (`books`).
    #[arg(long)]
    workload: Option<String>,
    /// Only this side (both by default).
    #[arg(long, value_enum)]
    direction: Option<Direction>,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = super::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// Output format (json: one object per line).
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

/// `HH:MM:SS.mmm` (UTC) of Unix milliseconds.
pub fn clock(ts_ms: u64) -> String {
    let day_ms = ts_ms % 86_400_000;
    let (h, m, s, ms) = (day_ms / 3_600_000, day_ms / 60_000 % 60, day_ms / 1000 % 60, day_ms % 1000);
    format!("{h:02}:{m:02}:{s:02}.{ms:03}")
}

/// The column header of human output.
pub fn header() -> String {
    format!(
        "{:<12}  {:<12}  {:<8}  {:<7}  {:<24}  {:>6}  {:>10}  {:<4}  {}",
        "TIME (UTC)", "WORKLOAD", "DIR", "METHOD", "PATH", "STATUS", "LATENCY", "TLS", "PEER"
    )
}

/// One event as a line for people.
pub fn line(e: &Event) -> String {
    let status = match e.grpc_status {
        Some(g) => format!("{}/{g}", e.status),
        None => e.status.to_string(),
    };
    let peer = if e.peer_id.is_empty() { "-" } else { e.peer_id.as_str() };
    let path = if e.path.is_empty() { "-" } else { e.path.as_str() };
    format!(
        "{:<12}  {:<12}  {:<8}  {:<7}  {:<24}  {:>6}  {:>8.2}ms  {:<4}  {peer}",
        clock(e.ts_ms),
        e.workload,
        e.direction,
        e.method,
        path,
        status,
        e.latency_ms,
        if e.tls { "yes" } else { "no" },
    )
}

pub async fn run(args: TapArgs) -> anyhow::Result<()> {
    let all = args.source.proxies().await?;
    let names: Vec<String> = all.iter().map(|p| p.workload.clone()).collect();
    let proxies: Vec<_> = all.into_iter().filter(|p| stream::selects(args.workload.as_deref(), &p.workload)).collect();
    if proxies.is_empty() {
        bail!("no proxy matches --workload {:?}; proxies: {}", args.workload.unwrap_or_default(), names.join(", "));
    }
    let query = Query {
        path: args.path.clone(),
        method: args.method.clone(),
        authority: args.authority.clone(),
        direction: args.direction.map(|d| d.as_str().to_string()),
    };
    let mut taps = stream::start(args.source.clone(), proxies, args.workload.clone(), &query);
    if args.output == Output::Human {
        println!("{}", header());
    }
    let mut seen = 0u64;
    let end = super::sleep_or_forever(args.duration);
    tokio::pin!(end);
    let interrupted = super::interrupted();
    tokio::pin!(interrupted);
    while args.max.is_none_or(|max| seen < max) {
        let note = tokio::select! {
            n = taps.rx.recv() => n,
            _ = &mut end => break,
            _ = &mut interrupted => break,
        };
        match note {
            Some(Note::Event(e)) => {
                seen += 1;
                let text = match args.output {
                    Output::Human => line(&e),
                    Output::Json => serde_json::to_string(&e)?,
                };
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                    // The reader went away (`| head`): done.
                    break;
                }
            }
            Some(Note::Warning(w)) => eprintln!("warning: {w}"),
            None => break,
        }
    }
    if seen == 0 {
        eprintln!("no matching requests");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00.000");
        assert_eq!(clock(1_700_000_000_123), "22:13:20.123");
    }

    #[test]
    fn lines_line_up_with_the_header() {
        let e = Event {
            ts_ms: 1_700_000_000_123,
            direction: "inbound".into(),
            workload: "books-0".into(),
            peer_id: "spiffe://demo.mesh/ns/default/sa/web".into(),
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            latency_ms: 1.234,
            tls: true,
            ..Event::default()
        };
        let l = line(&e);
        assert_eq!(
            l.split_whitespace().collect::<Vec<_>>(),
            [
                "22:13:20.123",
                "books-0",
                "inbound",
                "GET",
                "/",
                "200",
                "1.23ms",
                "yes",
                "spiffe://demo.mesh/ns/default/sa/web"
            ]
        );
        let h = header();
        assert_eq!(l.find("200"), h.find("STATUS").map(|i| i + "STATUS".len() - 3));
        assert_eq!(l.find("spiffe"), h.find("PEER"));
        let grpc = line(&Event { grpc_status: Some(14), peer_id: String::new(), ..e });
        assert!(grpc.contains("200/14") && grpc.ends_with("  -"), "{grpc}");
    }
}
