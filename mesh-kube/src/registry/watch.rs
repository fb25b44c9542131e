//! The watch: reflectors on Services and EndpointSlices (all namespaces);
//! every change recomputes the Services it touches with
//! [`service_from`](super::service_from) and upserts or removes them
//! through the sink. A Service whose objects are invalid keeps what was
//! served before; its problems are logged (located by object and field) and
//! counted in [`RegistryStats`].

use super::service::{SERVICE_NAME_LABEL, service_from};
use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use mesh_registry::model::ServiceKey;
use mesh_registry::sink::RegistrySink;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the registry's work, for metrics and tests.
#[derive(Debug, Clone, Default)]
pub struct RegistryStats {
    /// Services written to the sink (upserts and removals).
    pub applied: Arc<AtomicU64>,
    /// Problems found in objects (each also logged).
    pub problems: Arc<AtomicU64>,
    /// Watch errors (the watch retries with backoff).
    pub watch_errors: Arc<AtomicU64>,
}

/// What a watch event means for the registry.
enum Change {
    /// The Service with this key may have changed.
    Service(ServiceKey),
    /// A watch finished a (re)list: everything may have changed.
    Listed(Kind),
    /// Nothing to do.
    None,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Services,
    Slices,
}

/// The Kubernetes registry (see the module docs).
pub struct KubernetesRegistry {
    client: Client,
    sink: Arc<dyn RegistrySink>,
    stats: RegistryStats,
}

impl std::fmt::Debug for KubernetesRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesRegistry").field("stats", &self.stats).finish()
    }
}

impl KubernetesRegistry {
    /// A registry writing what `client` sees into `sink`.
    pub fn new(client: Client, sink: Arc<dyn RegistrySink>) -> Self {
        Self { client, sink, stats: RegistryStats::default() }
    }

    /// Its counters (shared: they keep counting while [`Self::run`] runs).
    pub fn stats(&self) -> RegistryStats {
        self.stats.clone()
    }

    /// Watches until the future is dropped (watch errors are retried with backoff).
    pub async fn run(self) {
        let (services, service_writer) = reflector::store::<KubeService>();
        let (slices, slice_writer) = reflector::store::<EndpointSlice>();
        let service_events = reflector::reflector(
            service_writer,
            watcher(Api::<KubeService>::all(self.client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .map(|event| event.map(|e| change(e, Kind::Services, service_key)));
        let slice_events = reflector::reflector(
            slice_writer,
            watcher(Api::<EndpointSlice>::all(self.client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .map(|event| event.map(|e| change(e, Kind::Slices, slice_service_key)));
        let mut events = stream::select(service_events.boxed(), slice_events.boxed());

        let mut state = State { served: BTreeSet::new(), listed_services: false, listed_slices: false };
        while let Some(event) = events.next().await {
            match event {
                Err(e) => {
                    self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "Kubernetes watch failed; retrying");
                }
                Ok(Change::None) => {}
                Ok(Change::Service(key)) => self.apply(&key, &services, &slices, &mut state),
                Ok(Change::Listed(kind)) => {
                    match kind {
                        Kind::Services => state.listed_services = true,
                        Kind::Slices => state.listed_slices = true,
                    }
                    let mut keys: BTreeSet<ServiceKey> =
                        services.state().iter().map(|s| service_key(s)).collect::<Option<_>>().unwrap_or_default();
                    keys.extend(state.served.iter().cloned());
                    for key in keys {
                        self.apply(&key, &services, &slices, &mut state);
                    }
                }
            }
        }
    }

    /// Recomputes one Service from the reflectors' stores and writes it.
    fn apply(&self, key: &ServiceKey, services: &Store<KubeService>, slices: &Store<EndpointSlice>, state: &mut State) {
        let Some(service) = services.get(&ObjectRef::new(&key.name).within(&key.namespace)) else {
            // Gone (or not listed yet: removals wait for the first list).
            if state.listed_services && state.served.remove(key) {
                self.sink.remove(key);
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let own: Vec<EndpointSlice> = slices
            .state()
            .iter()
            .filter(|s| slice_service_key(s).as_ref() == Some(key))
            .map(|s| EndpointSlice::clone(s))
            .collect();
        match service_from(&service, &own) {
            Ok(model) => {
                self.sink.upsert(model);
                state.served.insert(key.clone());
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
            }
            Err(problems) => {
                self.stats.problems.fetch_add(problems.len() as u64, Ordering::Relaxed);
                for problem in problems {
                    tracing::warn!(%problem, "Kubernetes object rejected; the Service keeps what was served before");
                }
            }
        }
    }
}

/// What the watch loop remembers.
struct State {
    /// Services written to the sink.
    served: BTreeSet<ServiceKey>,
    listed_services: bool,
    listed_slices: bool,
}

fn change<K>(event: watcher::Event<K>, kind: Kind, key: impl Fn(&K) -> Option<ServiceKey>) -> Change {
    match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
            key(&o).map_or(Change::None, Change::Service)
        }
        watcher::Event::Init => Change::None,
        watcher::Event::InitDone => Change::Listed(kind),
    }
}

fn service_key(service: &KubeService) -> Option<ServiceKey> {
    Some(ServiceKey::new(service.namespace()?, service.name_any()))
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
fn slice_service_key(slice: &EndpointSlice) -> Option<ServiceKey> {
    Some(ServiceKey::new(slice.namespace()?, slice.labels().get(SERVICE_NAME_LABEL)?.clone()))
}
