//! Watching the mesh: readiness probes before the load starts, and scraping
//! the replicas' sidecars (`/metrics`, inbound direction) into per-service
//! golden metrics.

use super::http::{Pool, get_once};
use super::plan::{Replica, Service};
use super::table::Row;
use crate::prom::{self, golden::Counters};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long one probe or scrape may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One thing that must be true before traffic starts.
#[derive(Debug, Clone)]
pub enum Probe {
    /// An admin server's `/ready` answers 200.
    Ready {
        /// What is probed, e.g. `books-0 proxy`.
        label: String,
        /// The admin address.
        admin: SocketAddr,
    },
    /// A demo app's `/healthz` answers 200 (asked directly, not via the mesh).
    App {
        /// What is probed.
        label: String,
        /// The app's address.
        addr: SocketAddr,
    },
    /// A proxy's `/config` shows `target` resolved to exactly `want`.
    Endpoints {
        /// What is probed.
        label: String,
        /// The proxy's admin address.
        admin: SocketAddr,
        /// The upstream target, e.g. `books.default:7001`.
        target: String,
        /// The endpoints it must have (the replicas' inbound addresses).
        want: Vec<SocketAddr>,
    },
}

impl Probe {
    /// What is probed, for messages.
    pub fn label(&self) -> String {
        match self {
            Probe::Ready { label, .. } | Probe::App { label, .. } => label.clone(),
            Probe::Endpoints { label, target, .. } => format!("{label} → {target}"),
        }
    }

    /// `Ok` when satisfied, else why not.
    pub async fn check(&self) -> Result<(), String> {
        match self {
            Probe::Ready { admin, .. } => ok_status(*admin, "/ready").await.map(drop),
            Probe::App { addr, .. } => ok_status(*addr, "/healthz").await.map(drop),
            Probe::Endpoints { admin, target, want, .. } => {
                let body = ok_status(*admin, "/config").await?;
                let config: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| format!("/config is not JSON: {e}"))?;
                let mut have = endpoints(&config, target).ok_or_else(|| format!("/config does not list {target}"))?;
                have.sort();
                let mut want: Vec<String> = want.iter().map(SocketAddr::to_string).collect();
                want.sort();
                if have == want {
                    Ok(())
                } else {
                    Err(format!("discovered endpoints [{}], expected [{}]", have.join(", "), want.join(", ")))
                }
            }
        }
    }
}

/// The endpoint addresses a proxy's `/config` shows for `target` (none
/// until resolved); `None` when the target is not there at all.
fn endpoints(config: &serde_json::Value, target: &str) -> Option<Vec<String>> {
    let t =
        config.get("targets")?.as_array()?.iter().find(|t| t.get("target").and_then(|v| v.as_str()) == Some(target))?;
    if t.get("status").and_then(|s| s.as_str()) != Some("resolved") {
        return Some(Vec::new());
    }
    let list = t.get("endpoints").and_then(|e| e.as_array()).map(Vec::as_slice).unwrap_or_default();
    Some(list.iter().filter_map(|e| e.get("address").and_then(|a| a.as_str()).map(String::from)).collect())
}

async fn ok_status(addr: SocketAddr, path: &str) -> Result<bytes::Bytes, String> {
    let reply = get_once(addr, path, TIMEOUT).await.map_err(|e| e.to_string())?;
    if reply.status.is_success() { Ok(reply.body) } else { Err(format!("{path} answered {}", reply.status)) }
}

/// The inbound addresses of `service`'s replicas: its registry endpoints.
pub fn inbound_addrs(replicas: &[Replica], service: Service) -> Vec<SocketAddr> {
    replicas.iter().filter(|r| r.service == service).map(|r| r.inbound).collect()
}

/// Everything that must hold for these replicas before traffic starts.
pub fn replica_probes(replicas: &[Replica]) -> Vec<Probe> {
    let mut probes = Vec::new();
    for r in replicas {
        probes.push(Probe::Ready { label: format!("{} proxy", r.name), admin: r.admin });
        probes.push(Probe::App { label: format!("{} app", r.name), addr: r.app });
        for (_, service) in &r.upstreams {
            let (label, want) = (format!("{} proxy", r.name), inbound_addrs(replicas, *service));
            probes.push(Probe::Endpoints { label, admin: r.admin, target: service.target(), want });
        }
    }
    probes
}

/// One replica's sidecar, scraped.
#[derive(Debug)]
struct Target {
    service: Service,
    name: String,
    pool: Pool,
    /// The first scrape (start of the run).
    baseline: Option<Counters>,
    /// The latest scrape.
    last: Option<Counters>,
    /// Whether the latest scrape worked.
    up: bool,
}

/// Scrapes every replica's sidecar and aggregates per service.
#[derive(Debug)]
pub struct Scraper {
    targets: Vec<Target>,
    per_service: usize,
    started: Option<Instant>,
    last_at: Option<Instant>,
}

impl Scraper {
    /// A scraper over these replicas' sidecars.
    pub fn new(replicas: &[Replica], per_service: usize) -> Self {
        let targets = replicas
            .iter()
            .map(|r| Target {
                service: r.service,
                name: r.name.clone(),
                pool: Pool::new(r.admin, r.admin.to_string(), TIMEOUT),
                baseline: None,
                last: None,
                up: false,
            })
            .collect();
        Self { targets, per_service, started: None, last_at: None }
    }

    /// Scrapes every sidecar; returns each service's traffic since the
    /// previous scrape (the first call sets the baseline and shows nothing).
    pub async fn scrape(&mut self) -> Vec<Row> {
        let now = Instant::now();
        let since = self.last_at.map(|t| now.saturating_duration_since(t));
        self.started.get_or_insert(now);
        self.last_at = Some(now);
        let mut deltas = Vec::with_capacity(self.targets.len());
        for t in &mut self.targets {
            let current = match scrape_one(&t.pool).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::debug!(replica = %t.name, error = %e, "scrape failed");
                    None
                }
            };
            t.up = current.is_some();
            let delta = match (&current, &t.last) {
                (Some(c), Some(prev)) => c.since(prev),
                // The first scrape of a replica sets its baseline.
                _ => Counters::default(),
            };
            deltas.push(delta);
            if let Some(c) = current {
                t.baseline.get_or_insert_with(|| c.clone());
                t.last = Some(c);
            }
        }
        self.rows(&deltas, since.unwrap_or_default())
    }

    /// Each service's traffic from the first scrape to the latest.
    pub fn summary(&self) -> (Vec<Row>, Duration) {
        let elapsed = match (self.started, self.last_at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        };
        let deltas: Vec<Counters> = self
            .targets
            .iter()
            .map(|t| match (&t.last, &t.baseline) {
                (Some(last), Some(base)) => last.since(base),
                _ => Counters::default(),
            })
            .collect();
        (self.rows(&deltas, elapsed), elapsed)
    }

    fn rows(&self, deltas: &[Counters], elapsed: Duration) -> Vec<Row> {
        Service::ALL
            .iter()
            .map(|&service| {
                let mut sum = Counters::default();
                let mut up = 0;
                for (t, d) in self.targets.iter().zip(deltas).filter(|(t, _)| t.service == service) {
                    sum.add(d);
                    up += usize::from(t.up);
                }
                Row {
                    service: service.name().to_string(),
                    replicas_up: up,
                    replicas: self.per_service,
                    stats: sum.stats(elapsed),
                }
            })
            .collect()
    }
}

async fn scrape_one(pool: &Pool) -> Result<Counters, String> {
    let reply = pool.get("/metrics").await.map_err(|e| e.to_string())?;
    if !reply.status.is_success() {
        return Err(format!("/metrics answered {}", reply.status));
    }
    let text = std::str::from_utf8(&reply.body).map_err(|e| format!("/metrics is not UTF-8: {e}"))?;
    let scrape = prom::parse(text).map_err(|e| format!("cannot parse /metrics: {e}"))?;
    Ok(Counters::from_scrape(&scrape, "inbound"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_resolved_endpoints() {
        let config = json!({ "targets": [
            { "target": "books.default:7001", "status": "resolved",
              "endpoints": [{ "address": "127.0.0.1:1" }, { "address": "127.0.0.1:2" }] },
            { "target": "authors.default:7002", "status": "pending", "endpoints": [] },
        ]});
        assert_eq!(endpoints(&config, "books.default:7001"), Some(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()]));
        assert_eq!(endpoints(&config, "authors.default:7002"), Some(vec![]));
        assert_eq!(endpoints(&config, "web.default:8080"), None);
    }
}
