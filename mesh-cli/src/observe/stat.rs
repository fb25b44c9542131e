//! `meshctl stat`: golden metrics of the traffic each workload (or service)
//! received over a window: requests per second, success rate, p50/p95/p99
//! latency and the share of mTLS, from two scrapes of every proxy's
//! `/metrics` (inbound side) `--window` apart.

use super::proxies::{Proxy, Source};
use super::table::{self, Align};
use super::{By, ms, scrape};
use crate::Output;
use crate::prom::golden::Counters;
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Flags of `meshctl stat`.
#[derive(Debug, Clone, Args)]
pub struct StatArgs {
    #[command(flatten)]
    source: Source,
    /// One row per workload (proxy) or per service (workloads `<service>-<n>`).
    #[arg(long, value_enum, default_value_t = By::Workload)]
    by: By,
    /// How long to measure: the proxies are scraped at its start and end.
    #[arg(long, default_value = "10s", value_parser = super::parse_window)]
    window: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

/// One proxy's traffic over the window; `None` when a scrape failed.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The proxy's workload.
    pub workload: String,
    /// What it received, and over how long.
    pub delta: Option<(Counters, Duration)>,
}

/// One row: a workload's or a service's inbound golden metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatRow {
    /// The workload or service.
    pub name: String,
    /// Proxies in the group.
    pub proxies: usize,
    /// Proxies that answered both scrapes.
    pub proxies_up: usize,
    /// Responses in the window.
    pub requests: u64,
    /// Responses per second (each proxy's count over its own elapsed time).
    pub requests_per_second: f64,
    /// Share of successful responses (0..=1); `null` without traffic.
    pub success_rate: Option<f64>,
    /// Median latency to response headers.
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Share of responses on mTLS connections (0..=1); `null` without traffic.
    pub mtls_share: Option<f64>,
}

/// Groups proxies' measurements into rows, sorted by name.
pub fn aggregate(by: By, measured: &[Measured]) -> Vec<StatRow> {
    #[derive(Default)]
    struct Group {
        proxies: usize,
        up: usize,
        rps: f64,
        sum: Counters,
    }
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for m in measured {
        let g = groups.entry(by.key(&m.workload)).or_default();
        g.proxies += 1;
        if let Some((delta, elapsed)) = &m.delta {
            g.up += 1;
            let secs = elapsed.as_secs_f64();
            if secs > 0.0 {
                g.rps += delta.requests() / secs;
            }
            g.sum.add(delta);
        }
    }
    groups
        .into_iter()
        .map(|(name, g)| {
            let requests = g.sum.requests();
            let share = |part: f64| (requests > 0.0).then(|| part / requests);
            StatRow {
                name,
                proxies: g.proxies,
                proxies_up: g.up,
                requests: requests.max(0.0).round() as u64,
                requests_per_second: (g.rps * 1000.0).round() / 1000.0,
                success_rate: share(g.sum.success),
                p50_ms: ms(g.sum.latency.quantile(0.50)),
                p95_ms: ms(g.sum.latency.quantile(0.95)),
                p99_ms: ms(g.sum.latency.quantile(0.99)),
                mtls_share: share(g.sum.tls),
            }
        })
        .collect()
}

/// Each proxy's inbound traffic between its two scrapes.
fn measure(proxies: &[Proxy], scrapes: Vec<(Option<scrape::Taken>, Option<scrape::Taken>)>) -> Vec<Measured> {
    proxies
        .iter()
        .zip(scrapes)
        .map(|(p, pair)| {
            let delta = match pair {
                (Some(a), Some(b)) => {
                    let before = Counters::from_scrape(&a.scrape, "inbound");
                    let after = Counters::from_scrape(&b.scrape, "inbound");
                    Some((after.since(&before), b.at.saturating_duration_since(a.at)))
                }
                _ => None,
            };
            Measured { workload: p.workload.clone(), delta }
        })
        .collect()
}

/// The table for people.
pub fn render(by: By, window: Duration, rows: &[StatRow]) -> String {
    let headers = [
        (by.header(), Align::Left),
        ("PROXIES", Align::Right),
        ("REQ/S", Align::Right),
        ("SUCCESS", Align::Right),
        ("P50 (ms)", Align::Right),
        ("P95 (ms)", Align::Right),
        ("P99 (ms)", Align::Right),
        ("MTLS", Align::Right),
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s = |ms: Option<f64>| table::millis(ms.map(|m| m / 1000.0));
            vec![
                r.name.clone(),
                format!("{}/{}", r.proxies_up, r.proxies),
                format!("{:.1}", r.requests_per_second),
                table::percent(r.success_rate, 2),
                s(r.p50_ms),
                s(r.p95_ms),
                s(r.p99_ms),
                table::percent(r.mtls_share, 0),
            ]
        })
        .collect();
    format!("inbound traffic over the last {:.1}s\n{}", window.as_secs_f64(), table::render(&headers, &cells))
}

pub async fn run(args: StatArgs) -> anyhow::Result<()> {
    let proxies = args.source.proxies().await?;
    let scrapes = scrape::twice(&proxies, args.window).await?;
    let rows = aggregate(args.by, &measure(&proxies, scrapes));
    match args.output {
        Output::Human => print!("{}", render(args.by, args.window, &rows)),
        Output::Json => {
            let doc = serde_json::json!({
                "by": args.by,
                "direction": "inbound",
                "window_seconds": args.window.as_secs_f64(),
                "rows": rows,
            });
            println!("{doc}");
        }
    }
    let down: Vec<&str> = rows.iter().filter(|r| r.proxies_up < r.proxies).map(|r| r.name.as_str()).collect();
    if !down.is_empty() {
        eprintln!("warning: some proxies did not answer both scrapes: {}", down.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::golden::Histogram;

    fn counters(success: f64, failure: f64, tls: f64, fast: f64) -> Counters {
        let mut latency = Histogram::default();
        latency.add(0.001, fast);
        latency.add(0.01, success + failure);
        latency.add(f64::INFINITY, success + failure);
        Counters { success, failure, tls, latency }
    }

    fn measured(workload: &str, c: Option<Counters>, secs: f64) -> Measured {
        Measured { workload: workload.into(), delta: c.map(|c| (c, Duration::from_secs_f64(secs))) }
    }

    #[test]
    fn replicas_add_up_per_service() {
        let m = [
            measured("web-0", Some(counters(99.0, 1.0, 100.0, 50.0)), 4.0),
            measured("web-1", Some(counters(102.0, 0.0, 102.0, 51.0)), 4.08),
            measured("books-0", None, 0.0),
            measured("books-1", Some(counters(0.0, 0.0, 0.0, 0.0)), 4.0),
        ];
        let rows = aggregate(By::Service, &m);
        assert_eq!(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["books", "web"]);
        let web = &rows[1];
        assert_eq!((web.proxies, web.proxies_up, web.requests), (2, 2, 202));
        // Each proxy's count over its own elapsed time: 100/4 + 102/4.08.
        assert!((web.requests_per_second - 50.0).abs() < 1e-9, "{}", web.requests_per_second);
        assert_eq!(web.success_rate, Some(201.0 / 202.0));
        assert_eq!(web.mtls_share, Some(1.0));
        // 101 of 202 within 1 ms: the median is at the top of the first bucket.
        assert_eq!(web.p50_ms, Some(1.0));
        assert!(web.p95_ms.is_some_and(|p| p > 1.0 && p <= 10.0), "{:?}", web.p95_ms);
        let books = &rows[0];
        assert_eq!((books.proxies, books.proxies_up, books.requests), (2, 1, 0));
        assert_eq!((books.success_rate, books.p50_ms, books.mtls_share), (None, None, None));
    }

    #[test]
    fn workloads_stay_apart() {
        let m = [measured("web-1", Some(counters(4.0, 0.0, 0.0, 4.0)), 2.0), measured("web-0", None, 0.0)];
        let rows = aggregate(By::Workload, &m);
        assert_eq!(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["web-0", "web-1"]);
        assert_eq!(rows[1].requests_per_second, 2.0);
        assert_eq!(rows[1].mtls_share, Some(0.0));
        let text = render(By::Workload, Duration::from_secs(2), &rows);
        assert!(text.starts_with("inbound traffic over the last 2.0s\nWORKLOAD   PROXIES   REQ/S"), "{text}");
        let web0: Vec<&str> = text.lines().nth(2).expect("row").split_whitespace().collect();
        assert_eq!(web0, ["web-0", "0/1", "0.0", "-", "-", "-", "-", "-"]);
    }

    #[test]
    fn measures_each_proxy_over_its_own_scrapes() {
        let text = |n: u32| {
            format!(
                "response_total{{direction=\"inbound\",target=\"a\",tls=\"true\",peer_id=\"p\",status_code=\"200\",grpc_status=\"\",route=\"\",classification=\"success\"}} {n}\n\
                 response_latency_seconds_bucket{{direction=\"inbound\",target=\"a\",tls=\"true\",peer_id=\"p\",le=\"+Inf\"}} {n}\n"
            )
        };
        let at = std::time::Instant::now();
        let taken = |n, later: u64| scrape::Taken {
            at: at + Duration::from_millis(later),
            scrape: crate::prom::parse(&text(n)).expect("parses"),
        };
        let proxies = [Proxy {
            workload: "books-0".into(),
            identity: None,
            admin: super::super::client::Addr { host: "x".into(), port: 1 },
        }];
        let m = measure(&proxies, vec![(Some(taken(10, 0)), Some(taken(30, 2000)))]);
        let rows = aggregate(By::Workload, &m);
        assert_eq!(rows[0].requests, 20);
        assert_eq!(rows[0].requests_per_second, 10.0);
        assert_eq!(rows[0].mtls_share, Some(1.0));
    }
}
