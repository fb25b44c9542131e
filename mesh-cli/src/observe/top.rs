//! `meshctl top`: the most requested paths, live. Taps every proxy's
//! inbound side and counts requests by (service, method, path) with their
//! success rate and latency; the table is redrawn in place on a terminal and
//! printed as successive snapshots otherwise.

use super::proxies::Source;
use super::stream::{self, Event, Note, Query};
use super::table::{self, Align};
use super::{ms, service_of};
use crate::Output;
use crate::prom::golden::Histogram;
use anyhow::bail;
use clap::Args;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

/// Latency buckets, in seconds (the proxies' own).
const BUCKETS: [f64; 18] =
    [0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Distinct paths kept; past this, new ones are counted under `(other)`.
const MAX_KEYS: usize = 10_000;
/// Longest path shown in the table.
const MAX_PATH_SHOWN: usize = 60;

/// Flags of `meshctl top`.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    #[command(flatten)]
    source: Source,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = super::parse_duration)]
    duration: Option<Duration>,
    /// Rows shown.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// How often the table is redrawn.
    #[arg(long, default_value = "2s", value_parser = super::parse_window)]
    interval: Duration,
    /// Only these proxies: a workload (`books-0`) or a service (`books`).
    #[arg(long)]
    workload: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long, value_name = "PREFIX")]
    path: Option<String>,
    /// Output format (json: one snapshot object per line, the last with "final": true).
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

/// What requests are grouped by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    service: String,
    method: String,
    path: String,
}

#[derive(Debug, Default)]
struct Tally {
    count: u64,
    success: u64,
    latency: Histogram,
    max_ms: f64,
}

/// Requests counted by (service, method, path).
#[derive(Debug, Default)]
pub struct Top {
    tallies: HashMap<Key, Tally>,
    total: u64,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopRow {
    /// The service that served the requests.
    pub service: String,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Requests seen.
    pub count: u64,
    /// Requests per second since the start.
    pub requests_per_second: f64,
    /// Share that succeeded.
    pub success_rate: f64,
    /// Median latency.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency.
    pub p99_ms: Option<f64>,
    /// Slowest.
    pub max_ms: f64,
}

impl Top {
    /// Counts one request.
    pub fn add(&mut self, e: &Event) {
        let mut key =
            Key { service: service_of(&e.workload).to_string(), method: e.method.clone(), path: e.path.clone() };
        if !self.tallies.contains_key(&key) && self.tallies.len() >= MAX_KEYS {
            key.path = "(other)".to_string();
        }
        let t = self.tallies.entry(key).or_insert_with(|| {
            let mut latency = Histogram::default();
            for le in BUCKETS.into_iter().chain([f64::INFINITY]) {
                latency.add(le, 0.0);
            }
            Tally { latency, ..Tally::default() }
        });
        t.count += 1;
        t.success += u64::from(e.success());
        let secs = (e.latency_ms / 1000.0).max(0.0);
        // Cumulative buckets: the observation counts in every bucket at or above it.
        for b in t.latency.buckets.iter_mut().filter(|b| secs <= b.le) {
            b.count += 1.0;
        }
        t.max_ms = t.max_ms.max(e.latency_ms);
        self.total += 1;
    }

    /// Requests counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `limit` busiest keys, most requests first.
    pub fn rows(&self, elapsed: Duration, limit: usize) -> Vec<TopRow> {
        let mut all: Vec<(&Key, &Tally)> = self.tallies.iter().collect();
        all.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
        let secs = elapsed.as_secs_f64();
        all.into_iter()
            .take(limit)
            .map(|(k, t)| TopRow {
                service: k.service.clone(),
                method: k.method.clone(),
                path: k.path.clone(),
                count: t.count,
                requests_per_second: if secs > 0.0 { (t.count as f64 / secs * 100.0).round() / 100.0 } else { 0.0 },
                success_rate: if t.count > 0 { t.success as f64 / t.count as f64 } else { 0.0 },
                // Interpolating in a bucket may overshoot the slowest request seen.
                p50_ms: ms(t.latency.quantile(0.5)).map(|p| p.min(t.max_ms)),
                p99_ms: ms(t.latency.quantile(0.99)).map(|p| p.min(t.max_ms)),
                max_ms: (t.max_ms * 1000.0).round() / 1000.0,
            })
            .collect()
    }
}

/// The table for people.
pub fn render(title: &str, rows: &[TopRow]) -> String {
    let headers = [
        ("SERVICE", Align::Left),
        ("METHOD", Align::Left),
        ("PATH", Align::Left),
        ("COUNT", Align::Right),
        ("REQ/S", Align::Right),
        ("SUCCESS", Align::Right),
        ("P50 (ms)", Align::Right),
        ("P99 (ms)", Align::Right),
        ("MAX (ms)", Align::Right),
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let path = if r.path.chars().count() > MAX_PATH_SHOWN {
                format!("{}…", r.path.chars().take(MAX_PATH_SHOWN - 1).collect::<String>())
            } else {
                r.path.clone()
            };
            let s = |ms: Option<f64>| table::millis(ms.map(|m| m / 1000.0));
            vec![
                r.service.clone(),
                r.method.clone(),
                path,
                r.count.to_string(),
                format!("{:.1}", r.requests_per_second),
                table::percent(Some(r.success_rate), 2),
                s(r.p50_ms),
                s(r.p99_ms),
                format!("{:.2}", r.max_ms),
            ]
        })
        .collect();
    format!("{title}\n{}", table::render(&headers, &cells))
}

/// Where snapshots go.
struct Screen {
    tty: bool,
    output: Output,
    shown: usize,
}

impl Screen {
    fn show(&mut self, top: &Top, elapsed: Duration, limit: usize, proxies: usize, last: bool) -> bool {
        let rows = top.rows(elapsed, limit);
        let text = match self.output {
            Output::Json => {
                let doc = serde_json::json!({
                    "elapsed_seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                    "proxies": proxies,
                    "requests": top.total(),
                    "final": last,
                    "rows": rows,
                });
                format!("{doc}\n")
            }
            Output::Human => {
                let stop = if last { "" } else { "; Ctrl-C stops" };
                let title = format!(
                    "top: inbound requests by path over {:.0}s, {} proxies tapped, {} requests{stop}",
                    elapsed.as_secs_f64(),
                    proxies,
                    top.total(),
                );
                let table = render(&title, &rows);
                match (self.tty, self.shown) {
                    // Home, clear the screen, draw.
                    (true, _) => format!("\x1b[H\x1b[2J{table}"),
                    (false, 0) => table,
                    (false, _) => format!("\n{table}"),
                }
            }
        };
        self.shown += 1;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
    }
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let all = args.source.proxies().await?;
    let names: Vec<String> = all.iter().map(|p| p.workload.clone()).collect();
    let proxies: Vec<_> = all.into_iter().filter(|p| stream::selects(args.workload.as_deref(), &p.workload)).collect();
    if proxies.is_empty() {
        bail!("no proxy matches --workload {:?}; proxies: {}", args.workload.unwrap_or_default(), names.join(", "));
    }
    let count = proxies.len();
    let query = Query { path: args.path.clone(), direction: Some("inbound".to_string()), ..Query::default() };
    let mut taps = stream::start(args.source.clone(), proxies, args.workload.clone(), &query);
    let mut screen = Screen { tty: std::io::stdout().is_terminal(), output: args.output, shown: 0 };
    let mut top = Top::default();
    let began = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = super::sleep_or_forever(args.duration);
    tokio::pin!(end);
    let interrupted = super::interrupted();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            note = taps.rx.recv() => match note {
                Some(Note::Event(e)) => top.add(&e),
                Some(Note::Warning(w)) => eprintln!("warning: {w}"),
                None => break,
            },
            _ = ticks.tick() => {
                if !screen.show(&top, began.elapsed(), args.limit, count, false) {
                    return Ok(());
                }
            }
            _ = &mut end => break,
            _ = &mut interrupted => break,
        }
    }
    screen.show(&top, began.elapsed(), args.limit, count, true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(workload: &str, path: &str, status: u16, latency_ms: f64) -> Event {
        Event {
            workload: workload.into(),
            method: "GET".into(),
            path: path.into(),
            status,
            latency_ms,
            direction: "inbound".into(),
            ..Event::default()
        }
    }

    #[test]
    fn counts_by_service_method_and_path() {
        let mut top = Top::default();
        for i in 0..10 {
            top.add(&event(if i % 2 == 0 { "books-0" } else { "books-1" }, "/books", 200, 1.5));
        }
        top.add(&event("authors-0", "/authors", 500, 20.0));
        top.add(&event("authors-1", "/authors", 200, 0.4));
        top.add(&Event { method: "POST".into(), ..event("books-0", "/books", 201, 3.0) });
        assert_eq!(top.total(), 13);
        let rows = top.rows(Duration::from_secs(2), 20);
        let keys: Vec<(&str, &str, &str, u64)> =
            rows.iter().map(|r| (r.service.as_str(), r.method.as_str(), r.path.as_str(), r.count)).collect();
        assert_eq!(
            keys,
            [("books", "GET", "/books", 10), ("authors", "GET", "/authors", 2), ("books", "POST", "/books", 1)]
        );
        assert_eq!(rows[0].requests_per_second, 5.0);
        assert_eq!(rows[0].success_rate, 1.0);
        // All ten within (1 ms, 2 ms]: the median interpolates to 1.5 ms.
        assert_eq!(rows[0].p50_ms, Some(1.5));
        assert_eq!(rows[1].success_rate, 0.5);
        assert_eq!(rows[1].max_ms, 20.0);
        assert_eq!(rows[1].p99_ms, Some(20.0), "never above the slowest request");
        assert_eq!(top.rows(Duration::from_secs(2), 1).len(), 1);
    }

    #[test]
    fn renders_and_truncates_long_paths() {
        let mut top = Top::default();
        top.add(&event("web-0", &format!("/{}", "x".repeat(100)), 200, 1.0));
        let text = render("t", &top.rows(Duration::from_secs(1), 5));
        let row = text.lines().nth(2).expect("a row");
        assert!(row.contains('…') && !row.contains(&"x".repeat(60)), "{row}");
        assert!(text.lines().nth(1).is_some_and(|h| h.starts_with("SERVICE   METHOD   PATH")), "{text}");
    }

    #[test]
    fn paths_are_bounded() {
        let mut top = Top::default();
        for i in 0..(MAX_KEYS + 5) {
            top.add(&event("web-0", &format!("/item/{i}"), 200, 1.0));
        }
        assert_eq!(top.tallies.len(), MAX_KEYS + 1);
        let other = Key { service: "web".into(), method: "GET".into(), path: "(other)".into() };
        assert_eq!(top.tallies.get(&other).map(|t| t.count), Some(5));
    }
}
