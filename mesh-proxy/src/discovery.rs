//! Discovery: a client of the control plane's Destination API.
//!
//! Each target gets one long-lived [`mesh_client::Watch`] that keeps the
//! latest answer in a `watch` channel. When the control plane is unreachable
//! or restarts, the watch keeps serving the last answer (static stability),
//! reconnects with jittered backoff, and reconciles from the fresh snapshot
//! the new stream starts with.

use mesh_client::Connection;
use mesh_client::watch::{self, Source};
use mesh_proto::destination::{
    self as pb, GetDestination, ProtocolHint, destination_client::DestinationClient, update,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tonic::transport::Channel;

/// What the proxy knows about one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share of traffic (0: drain).
    pub weight: u32,
    /// The identity its proxy must present (empty: not meshed).
    pub identity: Option<String>,
    /// Labels from the registry.
    pub labels: BTreeMap<String, String>,
}

/// The service a target resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Service name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The service port.
    pub port: u16,
    /// How to treat its traffic.
    pub protocol: ProtocolHint,
}

/// The latest answer for a target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resolution {
    /// No answer yet (the control plane has not replied since start).
    #[default]
    Pending,
    /// The control plane does not know the target.
    Unknown,
    /// A known service and its endpoints.
    Service {
        /// The service.
        info: ServiceInfo,
        /// Its endpoints by address.
        endpoints: BTreeMap<SocketAddr, EndpointMeta>,
    },
}

/// A resolution being watched; the background watch runs while any clone lives.
#[derive(Debug, Clone)]
pub struct Watch(Arc<Receivers>);

#[derive(Debug)]
struct Receivers {
    rx: tokio::sync::watch::Receiver<Arc<Resolution>>,
    state: tokio::sync::watch::Receiver<Connection>,
}

impl Watch {
    /// A receiver of the latest answer.
    pub fn rx(&self) -> tokio::sync::watch::Receiver<Arc<Resolution>> {
        self.0.rx.clone()
    }

    /// The latest answer.
    pub fn current(&self) -> Arc<Resolution> {
        self.0.rx.borrow().clone()
    }

    /// The stream's connection state.
    pub fn state(&self) -> Connection {
        *self.0.state.borrow()
    }
}

/// Resolves targets through the control plane and shares the watches.
#[derive(Debug, Clone)]
pub struct Resolver {
    client: Option<DestinationClient<Channel>>,
    workload: String,
    watches: Arc<Mutex<HashMap<String, Weak<Receivers>>>>,
}

impl Resolver {
    /// A resolver over the control plane `channel`; `None` means no control
    /// plane: every target stays unknown.
    pub fn new(channel: Option<Channel>, workload: impl Into<String>) -> Self {
        Self { client: channel.map(DestinationClient::new), workload: workload.into(), watches: Arc::default() }
    }

    /// Watches `target` (`name.ns:port` or `ip:port`). Watches are shared by
    /// target; the background task ends once the last [`Watch`] drops.
    pub fn resolve(&self, target: &str) -> Watch {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.retain(|_, w| w.strong_count() > 0);
        if let Some(w) = watches.get(target).and_then(Weak::upgrade) {
            return Watch(w);
        }
        let receivers = match self.client.clone() {
            Some(client) => {
                let req = GetDestination { target: target.to_string(), context_workload: self.workload.clone() };
                let watch = watch::Watch::new(Destination { client, req }, Arc::new(Resolution::Pending));
                let receivers = Receivers { rx: watch.subscribe(), state: watch.connection() };
                // Runs until the last receiver (every `Watch` clone, every balancer) drops.
                tokio::spawn(watch.run());
                receivers
            }
            None => {
                let (_, rx) = tokio::sync::watch::channel(Arc::new(Resolution::Unknown));
                let (_, state) = tokio::sync::watch::channel(Connection::Connecting);
                Receivers { rx, state }
            }
        };
        let receivers = Arc::new(receivers);
        watches.insert(target.to_string(), Arc::downgrade(&receivers));
        Watch(receivers)
    }

    /// Targets currently watched, with their answers (for `/config`).
    pub fn snapshot(&self) -> Vec<(String, Watch)> {
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, Watch)> =
            watches.iter().filter_map(|(t, w)| w.upgrade().map(|w| (t.clone(), Watch(w)))).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// One target's Destination stream.
struct Destination {
    client: DestinationClient<Channel>,
    req: GetDestination,
}

impl Source for Destination {
    type Item = pb::Update;
    type State = Arc<Resolution>;
    type Stream = tonic::Streaming<pb::Update>;

    async fn open(&mut self) -> Result<Self::Stream, tonic::Status> {
        Ok(self.client.get(self.req.clone()).await?.into_inner())
    }

    fn snapshot(&mut self, update: pb::Update) -> Option<Arc<Resolution>> {
        match update.kind {
            Some(update::Kind::Snapshot(s)) => Some(Arc::new(from_snapshot(s))),
            _ => {
                tracing::debug!(target = %self.req.target, "a stream that does not start with a snapshot; waiting for one");
                None
            }
        }
    }

    fn update(&mut self, cur: &Arc<Resolution>, update: pb::Update) -> Option<Arc<Resolution>> {
        Some(apply(cur, update))
    }

    fn unchanged(&self, old: &Arc<Resolution>, new: &Arc<Resolution>) -> bool {
        old == new
    }

    fn disconnected(&mut self, outcome: Result<(), &tonic::Status>, delay: Duration) {
        let target = &self.req.target;
        match outcome {
            Ok(()) => tracing::info!(%target, ?delay, "destination stream ended; re-watching"),
            Err(e) => tracing::warn!(%target, code = ?e.code(), message = e.message(), ?delay,
                "destination watch failed; serving the last known endpoints and retrying"),
        }
    }
}

/// Applies one update to a resolution.
pub fn apply(cur: &Arc<Resolution>, update: pb::Update) -> Arc<Resolution> {
    match update.kind {
        Some(update::Kind::Snapshot(s)) => Arc::new(from_snapshot(s)),
        Some(update::Kind::Add(set)) => {
            let Resolution::Service { info, endpoints } = &**cur else {
                tracing::debug!("add for an unknown service ignored");
                return cur.clone();
            };
            let mut endpoints = endpoints.clone();
            for ep in set.endpoints.iter().filter_map(endpoint) {
                endpoints.insert(ep.addr, ep);
            }
            Arc::new(Resolution::Service { info: info.clone(), endpoints })
        }
        Some(update::Kind::Remove(set)) => {
            let Resolution::Service { info, endpoints } = &**cur else {
                return cur.clone();
            };
            let mut endpoints = endpoints.clone();
            for a in &set.addresses {
                if let Ok(addr) = SocketAddr::try_from(a) {
                    endpoints.remove(&addr);
                }
            }
            Arc::new(Resolution::Service { info: info.clone(), endpoints })
        }
        None => cur.clone(),
    }
}

fn from_snapshot(s: pb::Snapshot) -> Resolution {
    let (true, Some(svc)) = (s.exists, s.service) else {
        return Resolution::Unknown;
    };
    let info = ServiceInfo {
        name: svc.name,
        namespace: svc.namespace,
        port: u16::try_from(svc.port).unwrap_or(0),
        protocol: ProtocolHint::try_from(svc.protocol).unwrap_or(ProtocolHint::Unspecified),
    };
    let endpoints = s.endpoints.iter().filter_map(endpoint).map(|e| (e.addr, e)).collect();
    Resolution::Service { info, endpoints }
}

fn endpoint(ep: &pb::Endpoint) -> Option<EndpointMeta> {
    let addr = match ep.address.as_ref().map(SocketAddr::try_from) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "endpoint with an invalid address ignored");
            return None;
        }
        None => {
            tracing::warn!("endpoint without an address ignored");
            return None;
        }
    };
    Some(EndpointMeta {
        addr,
        weight: ep.weight,
        identity: (!ep.identity.is_empty()).then(|| ep.identity.clone()),
        labels: ep.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::{AddressSet, EndpointSet, Snapshot, Update};

    fn ep(addr: &str, weight: u32) -> pb::Endpoint {
        let a: SocketAddr = addr.parse().expect("addr");
        pb::Endpoint { address: Some(a.into()), weight, ..Default::default() }
    }

    fn snap(eps: Vec<pb::Endpoint>) -> Update {
        let service = pb::ServiceMeta { name: "b".into(), namespace: "default".into(), port: 80, protocol: 1 };
        Update { kind: Some(update::Kind::Snapshot(Snapshot { exists: true, service: Some(service), endpoints: eps })) }
    }

    fn addrs(r: &Resolution) -> Vec<String> {
        match r {
            Resolution::Service { endpoints, .. } => endpoints.keys().map(|a| a.to_string()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn snapshot_add_remove() {
        let r = Arc::new(Resolution::Pending);
        let r = apply(&r, snap(vec![ep("10.0.0.1:80", 1)]));
        assert_eq!(addrs(&r), ["10.0.0.1:80"]);
        let add = Update { kind: Some(update::Kind::Add(EndpointSet { endpoints: vec![ep("10.0.0.2:80", 1)] })) };
        let r = apply(&r, add);
        assert_eq!(addrs(&r), ["10.0.0.1:80", "10.0.0.2:80"]);
        let a: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let rm = Update { kind: Some(update::Kind::Remove(AddressSet { addresses: vec![a.into()] })) };
        let r = apply(&r, rm);
        assert_eq!(addrs(&r), ["10.0.0.2:80"]);
        // A fresh snapshot (after a reconnect) replaces everything.
        let r = apply(&r, snap(vec![ep("10.0.0.3:80", 1)]));
        assert_eq!(addrs(&r), ["10.0.0.3:80"]);
    }

    #[test]
    fn bad_addresses_are_skipped_not_fatal() {
        let bad = pb::Endpoint { address: Some(pb::SocketAddress { ip: vec![1, 2], port: 80 }), ..Default::default() };
        let r = apply(&Arc::new(Resolution::Pending), snap(vec![bad, ep("10.0.0.1:80", 1)]));
        assert_eq!(addrs(&r), ["10.0.0.1:80"]);
    }

    #[test]
    fn unknown_targets() {
        let u = Update { kind: Some(update::Kind::Snapshot(Snapshot::default())) };
        assert_eq!(*apply(&Arc::new(Resolution::Pending), u), Resolution::Unknown);
    }
}
