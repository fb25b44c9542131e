//! The Policy gRPC service: each watch sends the full policy first, then the
//! full policy again whenever (and only when) it changes, until the client
//! goes away or the control plane shuts down.

use crate::store::Store;
use futures_util::Stream;
use mesh_core::shutdown::Shutdown;
use mesh_proto::policy::{InboundPolicy, InboundRequest, OutboundPolicy, OutboundRequest, policy_server::Policy};
use mesh_registry::target::{InvalidTarget, Target};
use mesh_registry::translate::InboundTarget;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// The `api` label of the Policy API's metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    /// `outbound` or `inbound`.
    api: &'static str,
}

/// Metrics of the Policy API.
#[derive(Debug, Clone, Default)]
pub struct PolicyMetrics {
    watchers: Family<ApiLabels, Gauge>,
    updates: Family<ApiLabels, Counter>,
}

impl PolicyMetrics {
    /// Registers `policy_watchers{api}` and `policy_updates_total{api}`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register("policy_watchers", "Open Policy watch streams", self.watchers.clone());
        reg.register("policy_updates", "Policies sent on Policy watch streams", self.updates.clone());
    }
}

/// Serves [`Policy`] from a [`Store`].
#[derive(Debug, Clone)]
pub struct PolicyService {
    store: Store,
    metrics: PolicyMetrics,
    shutdown: Shutdown,
}

impl PolicyService {
    /// A service answering from `store`; open streams end on `shutdown` so
    /// proxies reconnect (to this control plane's successor).
    pub fn new(store: Store, metrics: PolicyMetrics, shutdown: Shutdown) -> Self {
        Self { store, metrics, shutdown }
    }

    fn stream<T>(&self, api: &'static str, rx: watch::Receiver<Arc<T>>) -> PolicyStream<T>
    where
        T: Clone + PartialEq + Send + Sync + 'static,
    {
        let labels = ApiLabels { api };
        let state = WatchState {
            rx,
            prev: None,
            _guard: mesh_core::gauge::Held::new(self.metrics.watchers.get_or_create(&labels).clone()),
            updates: self.metrics.updates.get_or_create(&labels).clone(),
            shutdown: self.shutdown.clone(),
        };
        Box::pin(futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if st.prev.is_some() {
                    tokio::select! {
                        changed = st.rx.changed() => if changed.is_err() { return None },
                        _ = st.shutdown.triggered() => return None,
                    }
                } else if st.shutdown.is_triggered() {
                    return None;
                }
                let cur = st.rx.borrow_and_update().clone();
                if st.prev.as_deref() == Some(&*cur) {
                    continue;
                }
                st.prev = Some(cur.clone());
                st.updates.inc();
                return Some((Ok(T::clone(&cur)), st));
            }
        }))
    }
}

/// The stream type of both watches.
pub type PolicyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Policy for PolicyService {
    type WatchOutboundStream = PolicyStream<OutboundPolicy>;
    type WatchInboundStream = PolicyStream<InboundPolicy>;

    async fn watch_outbound(
        &self,
        request: Request<OutboundRequest>,
    ) -> Result<Response<Self::WatchOutboundStream>, Status> {
        let target: Target =
            request.into_inner().target.parse().map_err(|e: InvalidTarget| Status::invalid_argument(e.to_string()))?;
        tracing::debug!(%target, "outbound policy watch opened");
        Ok(Response::new(self.stream("outbound", self.store.watch_outbound(&target))))
    }

    async fn watch_inbound(
        &self,
        request: Request<InboundRequest>,
    ) -> Result<Response<Self::WatchInboundStream>, Status> {
        let target =
            InboundTarget::from_request(request.get_ref()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::debug!(%target, "inbound policy watch opened");
        Ok(Response::new(self.stream("inbound", self.store.watch_inbound(&target))))
    }
}

struct WatchState<T> {
    rx: watch::Receiver<Arc<T>>,
    prev: Option<Arc<T>>,
    _guard: mesh_core::gauge::Held,
    updates: Counter,
    shutdown: Shutdown,
}
