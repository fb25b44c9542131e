//! Live views of the mesh straight from the proxies, no Prometheus needed:
//! `meshctl stat` (golden metrics per workload or service over a window),
//! `top` (the busiest paths, live), `tap` (a live stream of requests) and
//! `edges` (who talks to whom, with identities and mTLS).
//!
//! Proxies are found through the control plane's admin port (`/proxies`,
//! where every proxy registers itself) or named directly with `--proxy`.
//! Every view reads the proxies' own admin endpoints: `/metrics` (stat,
//! edges), `/config` (edges: the proxy's identity) and `/tap` (top, tap).
//!
//! Modules: [`client`] (a small HTTP client for admin ports), [`proxies`]
//! (finding the proxies), [`scrape`] (reading `/metrics` and `/config`),
//! [`stat`], [`top`], [`tap`], [`edges`], [`stream`] (tapping many proxies at
//! once), [`table`] (aligned tables).

mod client;
mod edges;
mod proxies;
mod scrape;
mod stat;
mod stream;
mod table;
mod tap;
mod top;

pub use edges::EdgesArgs;
pub use stat::StatArgs;
pub use tap::TapArgs;
pub use top::TopArgs;

use anyhow::Context as _;
use std::future::Future;
use std::time::Duration;

/// How `stat` and `edges` group proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// One row per workload (one proxy each: `books-0`).
    Workload,
    /// One row per service: workloads named `<service>-<n>` add up.
    Service,
}

impl By {
    /// The group `workload` belongs to.
    pub fn key(self, workload: &str) -> String {
        match self {
            By::Workload => workload.to_string(),
            By::Service => service_of(workload).to_string(),
        }
    }

    /// The column header.
    pub fn header(self) -> &'static str {
        match self {
            By::Workload => "WORKLOAD",
            By::Service => "SERVICE",
        }
    }
}

/// The service a workload belongs to: its name without a trailing `-<n>`
/// (`books-0` → `books`, `web` → `web`, `api-v2-13` → `api-v2`).
pub fn service_of(workload: &str) -> &str {
    match workload.rsplit_once('-') {
        Some((base, n)) if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => workload,
    }
}

/// `meshctl stat`.
pub fn stat(args: StatArgs) -> anyhow::Result<()> {
    block_on(stat::run(args))
}

/// `meshctl top`.
pub fn top(args: TopArgs) -> anyhow::Result<()> {
    block_on(top::run(args))
}

/// `meshctl tap`.
pub fn tap(args: TapArgs) -> anyhow::Result<()> {
    block_on(tap::run(args))
}

/// `meshctl edges`.
pub fn edges(args: EdgesArgs) -> anyhow::Result<()> {
    block_on(edges::run(args))
}

fn block_on<F: Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(f)
}

/// Parses `--window`: at least 100 ms.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let d = mesh_core::duration::parse(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err("the window must be at least 100ms".to_string());
    }
    Ok(d)
}

/// Parses `--duration`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_core::duration::parse(s).map_err(|e| e.to_string())
}

/// Completes when `duration` (if any) has passed.
async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM; never if they cannot be caught.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Runs `futures` concurrently; each result in order (`None` if its task
/// panicked).
async fn join_all<T, F>(futures: impl IntoIterator<Item = F>) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut n = 0;
    for (i, f) in futures.into_iter().enumerate() {
        set.spawn(async move { (i, f.await) });
        n += 1;
    }
    let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(n).collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, v)) = done
            && let Some(slot) = out.get_mut(i)
        {
            *slot = Some(v);
        }
    }
    out
}

/// Milliseconds rounded to the microsecond, for JSON.
fn ms(seconds: Option<f64>) -> Option<f64> {
    seconds.map(|s| (s * 1e6).round() / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_strip_the_replica_number() {
        assert_eq!(service_of("books-0"), "books");
        assert_eq!(service_of("books-12"), "books");
        assert_eq!(service_of("api-v2-3"), "api-v2");
        assert_eq!(service_of("api-v2"), "api-v2");
        assert_eq!(service_of("traffic"), "traffic");
        assert_eq!(service_of("-1"), "-1");
        assert_eq!(service_of("web-"), "web-");
        assert_eq!(By::Service.key("web-1"), "web");
        assert_eq!(By::Workload.key("web-1"), "web-1");
    }

    #[test]
    fn windows_have_a_floor() {
        assert_eq!(parse_window("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_window("10ms").is_err());
        assert!(parse_window("ten").is_err());
    }
}
