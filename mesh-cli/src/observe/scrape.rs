//! Reading proxies' `/metrics`, concurrently, with the moment each scrape
//! was taken (the middle of its request), so rates divide by each proxy's
//! own elapsed time.

use super::client::{self, Addr};
use super::proxies::Proxy;
use crate::prom::{self, Scrape};
use std::time::{Duration, Instant};

/// How long one scrape may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// One proxy's metrics at one moment.
#[derive(Debug, Clone)]
pub struct Taken {
    /// When: the middle of the request that fetched it.
    pub at: Instant,
    /// The samples.
    pub scrape: Scrape,
}

/// Fetches and parses one proxy's `/metrics`.
pub async fn metrics(admin: &Addr) -> Result<Taken, String> {
    let sent = Instant::now();
    let body = client::get(admin, "/metrics", TIMEOUT).await.map_err(|e| e.to_string())?;
    let received = Instant::now();
    let text = std::str::from_utf8(&body).map_err(|e| format!("http://{admin}/metrics is not UTF-8: {e}"))?;
    let scrape = prom::parse(text).map_err(|e| format!("cannot parse http://{admin}/metrics: {e}"))?;
    Ok(Taken { at: sent + received.saturating_duration_since(sent) / 2, scrape })
}

/// Scrapes every proxy at once; a proxy that fails is `Err` (and logged at
/// debug level).
pub async fn all(proxies: &[Proxy]) -> Vec<Result<Taken, String>> {
    let results = super::join_all(proxies.iter().map(|p| {
        let admin = p.admin.clone();
        async move { metrics(&admin).await }
    }))
    .await;
    results
        .into_iter()
        .zip(proxies)
        .map(|(r, p)| {
            let r = r.unwrap_or_else(|| Err("the scrape failed".to_string()));
            if let Err(e) = &r {
                tracing::debug!(workload = %p.workload, error = %e, "scrape failed");
            }
            r
        })
        .collect()
}

/// Scrapes every proxy, waits `window` (cut short by Ctrl-C), scrapes again.
pub async fn twice(proxies: &[Proxy], window: Duration) -> anyhow::Result<Vec<(Option<Taken>, Option<Taken>)>> {
    let first = all(proxies).await;
    if !first.is_empty() && first.iter().all(Result::is_err) {
        let why: Vec<String> = first.iter().filter_map(|r| r.as_ref().err()).map(|e| format!("  - {e}")).collect();
        anyhow::bail!("no proxy answered:\n{}", why.join("\n"));
    }
    tokio::select! {
        _ = tokio::time::sleep(window) => {}
        _ = super::interrupted() => anyhow::bail!("interrupted before the window ended"),
    }
    let second = all(proxies).await;
    Ok(first.into_iter().zip(second).map(|(a, b)| (a.ok(), b.ok())).collect())
}
