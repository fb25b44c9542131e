//! Load balancing over a target's endpoints, kept current from discovery.
//!
//! Each target has one [`Balancer`], shared by every connection to it. A
//! background task turns discovery answers into an [`EndpointList`]
//! (reusing the [`Endpoint`] of an address that stays, so its connections
//! and load estimate survive), and picks are lock-free reads of that list:
//! power of two choices over peak-EWMA load. A removed endpoint simply
//! leaves the list; requests already on it finish (drain).

pub mod ewma;
pub mod p2c;

use crate::connect::Connector;
use crate::discovery::{EndpointMeta, Resolution, ServiceInfo, Watch};
use crate::pool::{ClientSettings, EndpointClient};
use ewma::{EwmaConfig, PeakEwma};
use mesh_policy::outbound::Breaker;
use mesh_proto::destination::ProtocolHint;
use p2c::Weights;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One endpoint: its address and metadata, its load, its health and its
/// connections.
#[derive(Debug)]
pub struct Endpoint {
    /// What discovery said.
    pub meta: EndpointMeta,
    /// Load estimate.
    pub load: Arc<PeakEwma>,
    /// Failure accrual (circuit breaking).
    pub health: Arc<Health>,
    /// Its connections.
    pub client: Arc<EndpointClient>,
}

/// Failure accrual: consecutive failures eject an endpoint for a while,
/// doubling with each consecutive ejection; after an ejection the endpoint is
/// on probation: one success restores it, one failure ejects it again.
#[derive(Debug, Default)]
pub struct Health {
    consecutive: AtomicU32,
    ejections: AtomicU32,
    ejected_until: std::sync::Mutex<Option<Instant>>,
}

impl Health {
    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| now < t)
    }

    /// Records a success.
    pub fn success(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        if !self.is_ejected(Instant::now()) {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure; returns the ejection it caused, if any. A failure
    /// reported while the endpoint is ejected belongs to a request sent
    /// before the ejection: it is no failed probation and changes nothing
    /// (counted, the requests in flight at an ejection would double it at
    /// once, several times over).
    pub fn failure(&self, breaker: &Breaker, now: Instant) -> Option<Duration> {
        if breaker.consecutive_failures == 0 || self.is_ejected(now) {
            return None;
        }
        let on_probation = self.ejections.load(Ordering::Relaxed) > 0;
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n < breaker.consecutive_failures && !on_probation {
            return None;
        }
        self.consecutive.store(0, Ordering::Relaxed);
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let d = breaker.base_ejection.saturating_mul(1u32 << k).min(breaker.max_ejection);
        *self.ejected_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + d);
        Some(d)
    }
}

/// Why a target has no endpoint to offer (the HTTP and TCP paths turn it
/// into their own errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// Discovery has not answered for the target.
    Unresolved(String),
    /// Discovery has no endpoint that may take traffic.
    NoEndpoints(String),
}

/// Makes endpoints with shared settings.
#[derive(Debug, Clone)]
pub struct EndpointFactory {
    /// How to connect.
    pub connector: Connector,
    /// HTTP client settings.
    pub settings: Arc<ClientSettings>,
    /// Load estimate tunables.
    pub ewma: EwmaConfig,
}

impl EndpointFactory {
    /// A new endpoint for `meta`.
    pub fn make(&self, meta: EndpointMeta) -> Arc<Endpoint> {
        let client =
            EndpointClient::new(meta.addr, meta.identity.clone(), self.connector.clone(), self.settings.clone());
        Arc::new(Endpoint { meta, load: Arc::new(PeakEwma::new(self.ewma)), health: Arc::default(), client })
    }
}

/// Where discovery stands for a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No answer yet.
    Pending,
    /// Not a known service.
    Unknown,
    /// A known service.
    Resolved,
}

/// A target's endpoints at one moment.
#[derive(Debug)]
pub struct EndpointList {
    /// Where discovery stands.
    pub status: Status,
    /// The service, once resolved.
    pub service: Option<ServiceInfo>,
    /// The endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    weights: Weights,
}

impl EndpointList {
    fn new(status: Status, service: Option<ServiceInfo>, endpoints: Vec<Arc<Endpoint>>) -> Self {
        let weights = Weights::new(endpoints.iter().map(|e| e.meta.weight));
        Self { status, service, endpoints, weights }
    }

    /// Whether any endpoint may take traffic.
    pub fn has_live(&self) -> bool {
        self.weights.total() > 0
    }

    /// Power of two choices over peak-EWMA load.
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        let now = Instant::now();
        let mut rng = fastrand::Rng::new();
        let i = p2c::pick(&self.weights, &mut rng, |i| self.endpoints[i].load.load(now))?;
        self.endpoints.get(i)
    }

    /// Picks, avoiding endpoints in `tried` and ejected ones when others
    /// are live. With every endpoint ejected it fails open: some traffic
    /// beats none.
    pub fn pick_excluding(&self, tried: &[SocketAddr]) -> Option<&Arc<Endpoint>> {
        let first = self.pick()?;
        let now = Instant::now();
        let usable =
            |e: &Arc<Endpoint>| e.meta.weight > 0 && !tried.contains(&e.meta.addr) && !e.health.is_ejected(now);
        if usable(first) {
            return Some(first);
        }
        let by_load = |a: &&Arc<Endpoint>, b: &&Arc<Endpoint>| a.load.load(now).total_cmp(&b.load.load(now));
        self.endpoints
            .iter()
            .filter(|e| usable(e))
            .min_by(by_load)
            .or_else(|| {
                self.endpoints.iter().filter(|e| e.meta.weight > 0 && !tried.contains(&e.meta.addr)).min_by(by_load)
            })
            .or(Some(first))
    }
}

/// Balances one target; shared by all connections to it.
#[derive(Debug)]
pub struct Balancer {
    target: String,
    list: watch::Receiver<Arc<EndpointList>>,
    /// For `ip:port` targets: the address itself, used when discovery does
    /// not know it (unmeshed destination) or has not answered in time.
    passthrough: Option<SocketAddr>,
    passthrough_ep: OnceLock<Arc<EndpointList>>,
    factory: EndpointFactory,
    failfast: AtomicBool,
    /// Requests in flight to this target (for concurrency limits).
    pub inflight: AtomicU32,
    /// Requests waiting for an endpoint or a connection.
    pub pending: AtomicU32,
    _watch: Option<Watch>,
}

impl Balancer {
    /// Starts balancing `target` from `watch`.
    pub fn new(target: &str, watch: Watch, factory: EndpointFactory) -> Arc<Self> {
        let passthrough = target.parse::<SocketAddr>().ok();
        let initial = build(None, &watch.current(), &factory, passthrough);
        let (tx, list) = watch::channel(Arc::new(initial));
        tokio::spawn(follow(watch.rx(), tx, factory.clone(), passthrough));
        Arc::new(Self {
            target: target.to_string(),
            list,
            passthrough,
            passthrough_ep: OnceLock::new(),
            factory,
            failfast: AtomicBool::new(false),
            inflight: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            _watch: Some(watch),
        })
    }

    /// A balancer over one fixed address (the local app, for inbound).
    pub fn fixed(name: &str, addr: SocketAddr, factory: EndpointFactory) -> Arc<Self> {
        let ep = factory.make(passthrough_meta(addr));
        let (_tx, list) = watch::channel(Arc::new(EndpointList::new(Status::Resolved, None, vec![ep])));
        Arc::new(Self {
            target: name.to_string(),
            list,
            passthrough: None,
            passthrough_ep: OnceLock::new(),
            factory,
            failfast: AtomicBool::new(false),
            inflight: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            _watch: None,
        })
    }

    /// Waits (up to `timeout`) for discovery's first answer, then returns the
    /// service's protocol hint, if any.
    pub async fn protocol_hint(&self, timeout: Duration) -> Option<ProtocolHint> {
        let mut rx = self.list.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|l| l.status != Status::Pending)).await;
        let l = rx.borrow();
        l.service.as_ref().map(|s| s.protocol)
    }

    /// The target this balancer serves.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The current list, without waiting.
    pub fn current(&self) -> Arc<EndpointList> {
        self.list.borrow().clone()
    }

    /// The endpoint list once it has a live endpoint. Waits up to `failfast`
    /// (replicas rolling, control plane starting); after one such wait times
    /// out, later requests fail at once until an endpoint appears.
    pub async fn ready(&self, failfast: Duration) -> Result<Arc<EndpointList>, Unavailable> {
        // Fast path: a live list, read without cloning the receiver.
        let current = self.list.borrow().clone();
        if current.has_live() {
            if self.failfast.load(Ordering::Relaxed) {
                self.failfast.store(false, Ordering::Relaxed);
            }
            return Ok(current);
        }
        let mut rx = self.list.clone();
        let current = rx.borrow_and_update().clone();
        if current.has_live() {
            return Ok(current);
        }
        if !self.failfast.load(Ordering::Relaxed) {
            let deadline = tokio::time::Instant::now() + failfast;
            while let Ok(Ok(())) = tokio::time::timeout_at(deadline, rx.changed()).await {
                let l = rx.borrow_and_update().clone();
                if l.has_live() {
                    return Ok(l);
                }
            }
            self.failfast.store(true, Ordering::Relaxed);
        }
        let current = rx.borrow().clone();
        match (current.status, self.passthrough) {
            (Status::Pending, Some(addr)) => Ok(self.passthrough_list(addr)),
            (Status::Pending, None) => Err(Unavailable::Unresolved(self.target.clone())),
            _ => Err(Unavailable::NoEndpoints(self.target.clone())),
        }
    }

    fn passthrough_list(&self, addr: SocketAddr) -> Arc<EndpointList> {
        self.passthrough_ep
            .get_or_init(|| {
                let ep = self.factory.make(passthrough_meta(addr));
                Arc::new(EndpointList::new(Status::Unknown, None, vec![ep]))
            })
            .clone()
    }
}

fn passthrough_meta(addr: SocketAddr) -> EndpointMeta {
    EndpointMeta { addr, weight: 1, identity: None, labels: BTreeMap::new() }
}

async fn follow(
    mut rx: watch::Receiver<Arc<Resolution>>,
    tx: watch::Sender<Arc<EndpointList>>,
    factory: EndpointFactory,
    passthrough: Option<SocketAddr>,
) {
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
        let resolution = rx.borrow_and_update().clone();
        let prev = tx.borrow().clone();
        tx.send_replace(Arc::new(build(Some(&prev), &resolution, &factory, passthrough)));
    }
}

/// The endpoint list for a resolution, reusing `prev`'s endpoints whose
/// address and identity are unchanged.
fn build(
    prev: Option<&EndpointList>,
    resolution: &Resolution,
    factory: &EndpointFactory,
    passthrough: Option<SocketAddr>,
) -> EndpointList {
    let reuse = |meta: &EndpointMeta| -> Arc<Endpoint> {
        let old = prev
            .and_then(|p| p.endpoints.iter().find(|e| e.meta.addr == meta.addr && e.meta.identity == meta.identity));
        match old {
            Some(e) if e.meta == *meta => e.clone(),
            // Same connections and load (in-flight requests included: their
            // guards hold the shared estimate), new weight or labels.
            Some(e) => Arc::new(Endpoint {
                meta: meta.clone(),
                load: e.load.clone(),
                health: e.health.clone(),
                client: e.client.clone(),
            }),
            None => factory.make(meta.clone()),
        }
    };
    match resolution {
        Resolution::Pending => EndpointList::new(Status::Pending, None, Vec::new()),
        Resolution::Unknown => {
            let eps = passthrough.map(|a| vec![reuse(&passthrough_meta(a))]).unwrap_or_default();
            EndpointList::new(Status::Unknown, None, eps)
        }
        Resolution::Service { info, endpoints } => {
            let eps = endpoints.values().map(reuse).collect();
            EndpointList::new(Status::Resolved, Some(info.clone()), eps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weight_change_keeps_in_flight_requests_and_the_estimate() {
        let factory = EndpointFactory {
            connector: Connector::new(Duration::from_secs(1), None),
            settings: Arc::default(),
            ewma: EwmaConfig::default(),
        };
        let addr: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        let resolution = |weight: u32| Resolution::Service {
            info: ServiceInfo {
                name: "books".into(),
                namespace: "default".into(),
                port: 80,
                protocol: ProtocolHint::Http1,
            },
            endpoints: BTreeMap::from([(addr, EndpointMeta { weight, ..passthrough_meta(addr) })]),
        };
        let before = build(None, &resolution(100), &factory, None);
        let ep = before.endpoints[0].clone();
        let slow = Instant::now();
        ep.load.observe(Duration::from_millis(80), slow);
        let _in_flight = [ep.load.start(), ep.load.start()];
        let after = build(Some(&before), &resolution(10), &factory, None);
        let moved = &after.endpoints[0];
        assert_eq!(moved.meta.weight, 10, "the new weight applies");
        assert_eq!(moved.load.pending(), 2, "requests in flight still count against the endpoint");
        assert_eq!(moved.load.cost(slow), ep.load.cost(slow), "the latency estimate carries over");
        drop(_in_flight);
        assert_eq!(moved.load.pending(), 0, "their completion is seen by the new entry");
    }

    #[test]
    fn consecutive_failures_eject_with_backoff_and_probation() {
        let b = Breaker {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(3),
        };
        let h = Health::default();
        let t = Instant::now();
        assert_eq!(h.failure(&b, t), None);
        assert_eq!(h.failure(&b, t), None);
        assert_eq!(h.failure(&b, t), Some(Duration::from_secs(1)));
        assert!(h.is_ejected(t) && !h.is_ejected(t + Duration::from_secs(2)));
        // Failures of requests already in flight at the ejection change nothing.
        assert_eq!(h.failure(&b, t + Duration::from_millis(10)), None);
        assert!(!h.is_ejected(t + Duration::from_millis(1500)), "the ejection was extended");
        // On probation: one failure re-ejects, for longer.
        let t2 = t + Duration::from_secs(2);
        assert_eq!(h.failure(&b, t2), Some(Duration::from_secs(2)));
        let t3 = t2 + Duration::from_secs(3);
        assert_eq!(h.failure(&b, t3), Some(Duration::from_secs(3)), "capped at the max");
        // A success after the ejection restores it fully.
        let h = Health::default();
        for _ in 0..3 {
            h.failure(&b, t);
        }
        *h.ejected_until.lock().expect("lock") = Some(Instant::now() - Duration::from_millis(1));
        h.success();
        assert_eq!(h.failure(&b, Instant::now()), None, "counting starts over");
        let off = Breaker::default();
        assert_eq!((0..10).filter_map(|_| Health::default().failure(&off, t)).count(), 0);
    }
}
