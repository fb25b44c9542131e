//! The Destination API: streams each target's endpoints to proxies.
//!
//! A stream sends the full answer first, then only what changed: adds before
//! removes, so a proxy never sees a transient empty set while replicas roll.

use crate::store::Store;
use futures_util::Stream;
use mesh_core::shutdown::Shutdown;
use mesh_proto::destination::{
    self as pb, AddressSet, EndpointSet, GetDestination, ProtocolHint, Snapshot, Update,
    destination_server::Destination, update,
};
use mesh_registry::model::Protocol;
use mesh_registry::target::{Resolution, ResolvedEndpoint, Target};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Metrics of the Destination API.
#[derive(Debug, Clone)]
pub struct DestinationMetrics {
    watchers: Gauge,
    updates: Counter,
    propagation: Histogram,
}

impl Default for DestinationMetrics {
    fn default() -> Self {
        Self {
            watchers: Gauge::default(),
            updates: Counter::default(),
            propagation: Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        }
    }
}

impl DestinationMetrics {
    /// Registers `destination_watchers` and `destination_updates_total`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register("destination_watchers", "Open Destination watch streams", self.watchers.clone());
        reg.register("destination_updates", "Updates sent on Destination watch streams", self.updates.clone());
        reg.register_with_unit(
            "destination_propagation",
            "Time from a registry change to the update leaving for a proxy",
            prometheus_client::registry::Unit::Seconds,
            self.propagation.clone(),
        );
    }
}

/// Serves [`Destination`] from a [`Store`].
#[derive(Debug, Clone)]
pub struct DestinationService {
    store: Store,
    metrics: DestinationMetrics,
    shutdown: Shutdown,
}

impl DestinationService {
    /// A service answering from `store`; open streams end on `shutdown` so
    /// proxies reconnect (to this control plane's successor).
    pub fn new(store: Store, metrics: DestinationMetrics, shutdown: Shutdown) -> Self {
        Self { store, metrics, shutdown }
    }
}

/// The stream type returned by `Get`.
pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = UpdateStream;

    async fn get(&self, request: Request<GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        let req = request.into_inner();
        let target: Target = req
            .target
            .parse()
            .map_err(|e: mesh_registry::target::InvalidTarget| Status::invalid_argument(e.to_string()))?;
        tracing::debug!(%target, workload = %req.context_workload, "destination watch opened");
        let state = WatchState {
            rx: self.store.watch(&target),
            prev: None,
            queue: VecDeque::new(),
            _guard: mesh_core::gauge::Held::new(self.metrics.watchers.clone()),
            updates: self.metrics.updates.clone(),
            propagation: self.metrics.propagation.clone(),
            store: self.store.clone(),
            shutdown: self.shutdown.clone(),
        };
        let stream = futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(u) = st.queue.pop_front() {
                    st.updates.inc();
                    return Some((Ok(u), st));
                }
                if st.prev.is_some() {
                    tokio::select! {
                        changed = st.rx.changed() => if changed.is_err() { return None },
                        _ = st.shutdown.triggered() => return None,
                    }
                    if let Some(at) = st.store.changed_at() {
                        st.propagation.observe(at.elapsed().as_secs_f64());
                    }
                }
                let cur = st.rx.borrow_and_update().clone();
                st.queue.extend(diff(st.prev.as_deref(), &cur));
                st.prev = Some(cur);
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

struct WatchState {
    rx: watch::Receiver<Arc<Resolution>>,
    prev: Option<Arc<Resolution>>,
    queue: VecDeque<Update>,
    _guard: mesh_core::gauge::Held,
    updates: Counter,
    propagation: Histogram,
    store: Store,
    shutdown: Shutdown,
}

/// The updates that take a proxy from `prev` to `next`.
pub fn diff(prev: Option<&Resolution>, next: &Resolution) -> Vec<Update> {
    let Some(prev) = prev.filter(|p| p.service == next.service) else {
        return vec![snapshot(next)];
    };
    let protocol = hint(next);
    let added: Vec<pb::Endpoint> = next
        .endpoints
        .iter()
        .filter(|(addr, ep)| prev.endpoints.get(addr) != Some(ep))
        .map(|(_, ep)| endpoint(ep, protocol))
        .collect();
    let removed: Vec<pb::SocketAddress> =
        prev.endpoints.keys().filter(|a| !next.endpoints.contains_key(a)).map(|a| (*a).into()).collect();
    let mut out = Vec::with_capacity(2);
    if !added.is_empty() {
        out.push(Update { kind: Some(update::Kind::Add(EndpointSet { endpoints: added })) });
    }
    if !removed.is_empty() {
        out.push(Update { kind: Some(update::Kind::Remove(AddressSet { addresses: removed })) });
    }
    out
}

fn snapshot(r: &Resolution) -> Update {
    let protocol = hint(r);
    let service = r.service.as_ref().map(|m| pb::ServiceMeta {
        name: m.key.name.clone(),
        namespace: m.key.namespace.clone(),
        port: u32::from(m.port),
        protocol: protocol as i32,
    });
    Update {
        kind: Some(update::Kind::Snapshot(Snapshot {
            exists: r.service.is_some(),
            service,
            endpoints: r.endpoints.values().map(|ep| endpoint(ep, protocol)).collect(),
        })),
    }
}

fn hint(r: &Resolution) -> ProtocolHint {
    match r.service.as_ref().map(|m| m.protocol) {
        None | Some(Protocol::Detect) => ProtocolHint::Unspecified,
        Some(Protocol::Http1) => ProtocolHint::Http1,
        Some(Protocol::Http2) => ProtocolHint::Http2,
        Some(Protocol::Opaque) => ProtocolHint::Opaque,
    }
}

fn endpoint(ep: &ResolvedEndpoint, protocol: ProtocolHint) -> pb::Endpoint {
    pb::Endpoint {
        address: Some(ep.addr.into()),
        weight: ep.weight,
        protocol: protocol as i32,
        identity: ep.identity.clone().unwrap_or_default(),
        labels: ep.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_registry::model::ServiceKey;
    use mesh_registry::target::ServiceMeta;
    use std::net::SocketAddr;

    fn res(addrs: &[&str], weight: u32) -> Resolution {
        let meta = ServiceMeta { key: ServiceKey::new("default", "books"), port: 80, protocol: Protocol::Http1 };
        let endpoints = addrs
            .iter()
            .map(|a| {
                let addr: SocketAddr = a.parse().expect("test addr");
                (addr, ResolvedEndpoint { addr, weight, identity: None, labels: Default::default() })
            })
            .collect();
        Resolution { service: Some(meta), endpoints }
    }

    fn kinds(us: &[Update]) -> Vec<&'static str> {
        us.iter()
            .map(|u| match u.kind {
                Some(update::Kind::Snapshot(_)) => "snapshot",
                Some(update::Kind::Add(_)) => "add",
                Some(update::Kind::Remove(_)) => "remove",
                None => "none",
            })
            .collect()
    }

    #[test]
    fn first_message_is_a_snapshot() {
        let r = res(&["10.0.0.1:80"], 1);
        assert_eq!(kinds(&diff(None, &r)), ["snapshot"]);
    }

    #[test]
    fn changes_are_adds_before_removes() {
        let a = res(&["10.0.0.1:80", "10.0.0.2:80"], 1);
        let b = res(&["10.0.0.2:80", "10.0.0.3:80"], 1);
        let us = diff(Some(&a), &b);
        assert_eq!(kinds(&us), ["add", "remove"]);
        let Some(update::Kind::Add(add)) = &us[0].kind else { panic!("add first") };
        assert_eq!(add.endpoints.len(), 1);
        assert!(diff(Some(&b), &b).is_empty(), "no change, no message");
    }

    #[test]
    fn changed_metadata_is_re_added() {
        let a = res(&["10.0.0.1:80"], 1);
        let b = res(&["10.0.0.1:80"], 5);
        assert_eq!(kinds(&diff(Some(&a), &b)), ["add"]);
    }

    #[test]
    fn service_change_resends_a_snapshot() {
        let a = res(&["10.0.0.1:80"], 1);
        let gone = Resolution::default();
        let us = diff(Some(&a), &gone);
        let Some(update::Kind::Snapshot(s)) = &us[0].kind else { panic!("snapshot") };
        assert!(!s.exists);
    }
}
