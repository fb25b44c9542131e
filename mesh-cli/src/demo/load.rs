//! The traffic generator: `GET /` to `web` at a fixed rate, through the
//! traffic sidecar.
//!
//! The schedule is open-loop: a request is due every `1/rps` whether or not
//! earlier ones have answered (a slow mesh does not slow the load down and
//! hide its own latency). In-flight requests are capped; a request due while
//! the cap is reached is skipped and counted.

use super::http::Pool;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Most requests in flight at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// A request with no answer after this long counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the generator did, as the client saw it.
#[derive(Debug, Default)]
pub struct LoadStats {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

/// A copy of [`LoadStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LoadTotals {
    /// Requests sent.
    pub sent: u64,
    /// Answered with 2xx.
    pub ok: u64,
    /// Answered otherwise, or not at all.
    pub failed: u64,
    /// Due while the in-flight cap was reached, so not sent.
    pub skipped: u64,
}

impl LoadStats {
    /// The totals so far.
    pub fn totals(&self) -> LoadTotals {
        LoadTotals {
            sent: self.sent.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
        }
    }
}

/// A running traffic generator.
#[derive(Debug)]
pub struct Load {
    stats: Arc<LoadStats>,
    permits: Arc<Semaphore>,
    ticker: JoinHandle<()>,
}

impl Load {
    /// Starts sending `rps` requests per second to `addr` (0: none).
    pub fn start(addr: SocketAddr, rps: f64) -> Self {
        let stats = Arc::new(LoadStats::default());
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let pool = Arc::new(Pool::new(addr, "web", REQUEST_TIMEOUT));
        let ticker = tokio::spawn(schedule(pool, rps, stats.clone(), permits.clone()));
        Self { stats, permits, ticker }
    }

    /// What it has done so far.
    pub fn totals(&self) -> LoadTotals {
        self.stats.totals()
    }

    /// Stops sending and waits (up to `grace`) for requests in flight.
    pub async fn stop(&self, grace: Duration) -> LoadTotals {
        self.ticker.abort();
        let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(grace, self.permits.acquire_many(all)).await;
        self.stats.totals()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

async fn schedule(pool: Arc<Pool>, rps: f64, stats: Arc<LoadStats>, permits: Arc<Semaphore>) {
    if !(rps.is_finite() && rps > 0.0) {
        return;
    }
    let period = Duration::from_secs_f64(1.0 / rps).max(Duration::from_micros(100));
    let mut ticks = tokio::time::interval(period);
    // After a stall (a suspended laptop), go on at the rate instead of bursting.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let (pool, stats) = (pool.clone(), stats.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match pool.get("/").await {
                Ok(reply) if reply.status.is_success() => stats.ok.fetch_add(1, Ordering::Relaxed),
                Ok(_) => stats.failed.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!(error = %e, "demo request failed");
                    stats.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A tiny keep-alive server answering every request with `200 ok`.
    async fn server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns = Arc::new(AtomicU64::new(0));
        let counter = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let rsp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(rsp).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sends_at_the_rate_and_reuses_connections() {
        let (addr, conns) = server().await;
        let load = Load::start(addr, 100.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let totals = load.stop(Duration::from_secs(2)).await;
        assert!((40..=60).contains(&totals.sent), "{totals:?}");
        assert_eq!(totals.ok, totals.sent, "{totals:?}");
        assert_eq!(totals.failed + totals.skipped, 0, "{totals:?}");
        let opened = conns.load(Ordering::Relaxed);
        assert!(opened <= 5, "{opened} connections for {} requests: no reuse", totals.sent);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn counts_failures() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let load = Load::start(addr, 50.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let totals = load.stop(Duration::from_secs(2)).await;
        assert!(totals.sent > 0 && totals.failed == totals.sent, "{totals:?}");
    }
}
