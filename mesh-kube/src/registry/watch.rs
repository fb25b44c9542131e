//! The watch: reflectors on Services, EndpointSlices, Pods (only their
//! ServiceAccount is kept: the identity endpoints run as), TrafficPolicies,
//! AuthorizationPolicies, HTTPRoutes and GRPCRoutes (all namespaces). A change recomputes the Services
//! it touches with [`service_from`](super::service_from) (plus the
//! TrafficPolicy targeting them) and upserts or removes them through the
//! sink; an AuthorizationPolicy, HTTPRoute or GRPCRoute change replaces the
//! policies ([`routes_from`](super::routes::routes_from)). An invalid object
//! is not served (a Service keeps what was served before); its problems,
//! located by object and field, are logged, counted in [`RegistryStats`]
//! and published as a Warning Event on the object, once per change
//! ([`super::report`]).
//!
//! Status conditions ([`super::status_writer`]) and Events are written only
//! by the replica holding the leader Lease ([`crate::lease`]); every replica
//! watches and serves.

use super::policy::{authorizations_from, traffic_from};
use super::report::{ObjectId, ProblemReporter};
use super::routes::routes_from;
use super::service::{SERVICE_NAME_LABEL, service_with_accounts};
use super::status_writer::{StatusStores, StatusWriter};
use crate::crd::{AuthorizationPolicy, TrafficPolicy};
use crate::gateway::{GRPCRoute, HTTPRoute};
use crate::lease::{Elector, LeaseConfig, default_identity};
use crate::rbac::{self, Access};
use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, PodSpec, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use mesh_registry::model::ServiceKey;
use mesh_registry::sink::RegistrySink;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Counters of the registry's work, for metrics and tests.
#[derive(Debug, Clone, Default)]
pub struct RegistryStats {
    /// Services written to the sink (upserts and removals).
    pub applied: Arc<AtomicU64>,
    /// Problems found in objects (counted once per object and change; each also logged).
    pub problems: Arc<AtomicU64>,
    /// Watch errors (the watch retries with backoff).
    pub watch_errors: Arc<AtomicU64>,
    /// Statuses written (only by the replica that leads).
    pub status_writes: Arc<AtomicU64>,
    /// Whether this replica holds the leader Lease (writes status and Events).
    pub leading: Arc<AtomicBool>,
}

/// What a watch event means for the registry.
enum Change {
    /// The Service with this key may have changed.
    Service(ServiceKey),
    /// A Pod (namespace, name) changed: the Services whose endpoints it backs may have.
    Pod(String, String),
    /// A TrafficPolicy (namespace, name) changed; it now targets this Service
    /// (`None` when deleted). The Service it targeted before changes too.
    Traffic((String, String), Option<ServiceKey>),
    /// A watch finished a (re)list: everything may have changed.
    Listed(Kind),
    /// An AuthorizationPolicy or a route changed.
    Policies,
    /// Nothing to do.
    None,
}

/// The kinds watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Services,
    Slices,
    Pods,
    Traffic,
    Authorizations,
    HttpRoutes,
    GrpcRoutes,
}

/// How many kinds are watched.
const KINDS: usize = 7;

/// A watch event, or a watch error of one kind.
type Item = Result<Change, (Kind, watcher::Error)>;

/// The Kubernetes registry (see the module docs).
pub struct KubernetesRegistry {
    client: Client,
    sink: Arc<dyn RegistrySink>,
    stats: RegistryStats,
    problems: ProblemReporter,
    synced: tokio::sync::watch::Sender<bool>,
    elector: Elector,
    /// Wakes the status writer.
    changed: Arc<Notify>,
    /// Whether it campaigns for the Lease and writes status (not when read-only).
    writes: bool,
}

impl std::fmt::Debug for KubernetesRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesRegistry").field("stats", &self.stats).finish()
    }
}

impl KubernetesRegistry {
    /// A registry writing what `client` sees into `sink`, electing its
    /// writer of status and Events on the default Lease ([`LeaseConfig::new`]).
    pub fn new(client: Client, sink: Arc<dyn RegistrySink>) -> Self {
        Self::with_lease(client, sink, LeaseConfig::new(default_identity()))
    }

    /// As [`Self::new`], with this Lease.
    pub fn with_lease(client: Client, sink: Arc<dyn RegistrySink>, lease: LeaseConfig) -> Self {
        let stats = RegistryStats::default();
        let elector = Elector::new(client.clone(), lease);
        let problems =
            ProblemReporter::new(client.clone(), stats.problems.clone(), elector.identity(), elector.leading());
        let synced = tokio::sync::watch::Sender::new(false);
        Self { client, sink, stats, problems, synced, elector, changed: Arc::default(), writes: true }
    }

    /// A registry that only reads: it writes no Events, no status and no
    /// Lease (for `meshctl`, which runs with the user's credentials and must
    /// not change the cluster).
    pub fn read_only(mut self) -> Self {
        self.problems.read_only();
        self.writes = false;
        self
    }

    /// Its counters (shared: they keep counting while [`Self::run`] runs).
    pub fn stats(&self) -> RegistryStats {
        self.stats.clone()
    }

    /// Becomes `true` once Services and EndpointSlices have been listed and
    /// written, and each policy kind listed or found missing (a cluster
    /// without the mesh's or the Gateway API's CRDs): serving before that
    /// would answer proxies with an empty registry.
    pub fn synced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// Watches until the future is dropped (watch errors are retried with
    /// backoff). Dropping it leaves the Lease to expire (as a crash would).
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Watches until `stop` completes, then releases the Lease if it holds
    /// it, so another replica takes over at once.
    pub async fn run_until(self, stop: impl Future<Output = ()>) {
        tokio::select! {
            () = self.watch() => {}
            () = stop => {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.elector.release()).await;
    }

    async fn watch(&self) {
        let (services, service_writer) = reflector::store::<KubeService>();
        let (slices, slice_writer) = reflector::store::<EndpointSlice>();
        let service_events = reflector::reflector(
            service_writer,
            watcher(rbac::SERVICES.all::<KubeService>(&self.client), watcher::Config::default()),
        )
        .default_backoff()
        .map(|event| event.map(|e| change(e, Kind::Services, service_key)).map_err(|e| (Kind::Services, e)));
        let slice_events = reflector::reflector(
            slice_writer,
            watcher(rbac::ENDPOINT_SLICES.all::<EndpointSlice>(&self.client), watcher::Config::default()),
        )
        .default_backoff()
        .map(|event| event.map(|e| change(e, Kind::Slices, slice_service_key)).map_err(|e| (Kind::Slices, e)));
        let (pods, pod_writer) = reflector::store::<Pod>();
        let pod_events = reflector::reflector(
            pod_writer,
            watcher(rbac::PODS.all::<Pod>(&self.client), watcher::Config::default()).modify(keep_service_account),
        )
        .default_backoff()
        .map(|event| {
            event
                .map(|e| match e {
                    watcher::Event::Apply(p) | watcher::Event::Delete(p) | watcher::Event::InitApply(p) => {
                        Change::Pod(p.namespace().unwrap_or_default(), p.name_any())
                    }
                    watcher::Event::Init => Change::None,
                    watcher::Event::InitDone => Change::Listed(Kind::Pods),
                })
                .map_err(|e| (Kind::Pods, e))
        });
        let (traffic, traffic_writer) = reflector::store::<TrafficPolicy>();
        let traffic_events = reflector::reflector(
            traffic_writer,
            watcher(rbac::TRAFFIC_POLICIES.all::<TrafficPolicy>(&self.client), watcher::Config::default()),
        )
        .default_backoff()
        .map(|event| {
            event
                .map(|e| match e {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        Change::Traffic((p.namespace().unwrap_or_default(), p.name_any()), traffic_target(&p))
                    }
                    watcher::Event::Delete(p) => {
                        Change::Traffic((p.namespace().unwrap_or_default(), p.name_any()), None)
                    }
                    watcher::Event::Init => Change::None,
                    watcher::Event::InitDone => Change::Listed(Kind::Traffic),
                })
                .map_err(|e| (Kind::Traffic, e))
        });
        let (authorizations, authorization_events) =
            policy_reflector::<AuthorizationPolicy>(&self.client, rbac::AUTHORIZATION_POLICIES, Kind::Authorizations);
        let (http_routes, http_route_events) =
            policy_reflector::<HTTPRoute>(&self.client, rbac::HTTP_ROUTES, Kind::HttpRoutes);
        let (grpc_routes, grpc_route_events) =
            policy_reflector::<GRPCRoute>(&self.client, rbac::GRPC_ROUTES, Kind::GrpcRoutes);
        let mut events = stream::select_all::<[stream::BoxStream<'static, Item>; KINDS]>([
            service_events.boxed(),
            slice_events.boxed(),
            pod_events.boxed(),
            traffic_events.boxed(),
            authorization_events,
            http_route_events,
            grpc_route_events,
        ]);
        let writer = StatusWriter {
            client: self.client.clone(),
            changed: self.changed.clone(),
            leading: self.elector.leading(),
            synced: self.synced.subscribe(),
            writes: self.stats.status_writes.clone(),
        };
        let status_stores = StatusStores {
            services: services.clone(),
            http_routes: http_routes.clone(),
            grpc_routes: grpc_routes.clone(),
            authorizations: authorizations.clone(),
            traffic: traffic.clone(),
        };
        let policies = PolicyStores { authorizations, http_routes, grpc_routes };

        let stores = Stores { services, slices, pods, traffic };
        let mut state = State {
            served: BTreeSet::new(),
            listed_services: false,
            traffic_targets: BTreeMap::new(),
            settled: BTreeSet::new(),
        };
        let watch = async {
            while let Some(event) = events.next().await {
                if matches!(event, Ok(Change::Pod(..)) | Err(_)) {
                    // Pods do not change any status (only which ServiceAccount serves).
                } else {
                    self.changed.notify_one();
                }
                match event {
                    Err((kind, e)) => {
                        self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(?kind, error = %e, "Kubernetes watch failed; retrying");
                        // A policy kind whose CRD is not installed (404) must not hold
                        // up serving; any other error must (serving without the
                        // policies could let through what they deny).
                        if !matches!(kind, Kind::Services | Kind::Slices) && not_installed(&e) {
                            state.settled.insert(kind);
                        }
                    }
                    Ok(Change::None) => {}
                    Ok(Change::Service(key)) => {
                        let own = slices_of(&stores.slices, &key);
                        self.apply(&key, own, &stores, &mut state);
                    }
                    Ok(Change::Pod(namespace, name)) => {
                        for key in services_backed_by(&stores.slices, &namespace, &name) {
                            let own = slices_of(&stores.slices, &key);
                            self.apply(&key, own, &stores, &mut state);
                        }
                    }
                    Ok(Change::Traffic(policy, target)) => {
                        let before = match &target {
                            Some(t) => state.traffic_targets.insert(policy, t.clone()),
                            None => state.traffic_targets.remove(&policy),
                        };
                        for key in BTreeSet::from_iter(before.into_iter().chain(target)) {
                            let own = slices_of(&stores.slices, &key);
                            self.apply(&key, own, &stores, &mut state);
                        }
                    }
                    Ok(Change::Policies) => self.apply_policies(&policies),
                    Ok(Change::Listed(kind @ (Kind::Authorizations | Kind::HttpRoutes | Kind::GrpcRoutes))) => {
                        state.settled.insert(kind);
                        self.apply_policies(&policies);
                    }
                    Ok(Change::Listed(kind)) => {
                        state.settled.insert(kind);
                        if kind == Kind::Services {
                            state.listed_services = true;
                        }
                        // Every Service, with the slices grouped once (not searched per Service).
                        let mut slices: BTreeMap<ServiceKey, Vec<EndpointSlice>> = BTreeMap::new();
                        for slice in stores.slices.state() {
                            if let Some(key) = slice_service_key(&slice) {
                                slices.entry(key).or_default().push(EndpointSlice::clone(&slice));
                            }
                        }
                        let mut keys: BTreeSet<ServiceKey> =
                            stores.services.state().iter().filter_map(|s| service_key(s)).collect();
                        keys.extend(state.served.iter().cloned());
                        for key in keys {
                            let own = slices.remove(&key).unwrap_or_default();
                            self.apply(&key, own, &stores, &mut state);
                        }
                    }
                }
                if state.settled.len() == KINDS && !*self.synced.borrow() {
                    tracing::info!("Kubernetes registry synced");
                    self.synced.send_replace(true);
                }
            }
        };
        let mut leading = self.elector.leading();
        let mirror = async {
            while leading.changed().await.is_ok() {
                let now = *leading.borrow_and_update();
                self.stats.leading.store(now, Ordering::Relaxed);
                if now {
                    // Problems found before this replica led get their Events now.
                    self.problems.publish_pending();
                }
            }
        };
        let elect = async {
            if self.writes {
                tokio::join!(writer.run(status_stores), self.elector.run());
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = watch => {}
            () = elect => {}
            () = mirror => {}
        }
    }

    /// Recomputes one Service from its object, its EndpointSlices (`own`)
    /// and its TrafficPolicy, and writes it.
    fn apply(&self, key: &ServiceKey, own: Vec<EndpointSlice>, stores: &Stores, state: &mut State) {
        let Some(service) = stores.services.get(&ObjectRef::new(&key.name).within(&key.namespace)) else {
            // Gone (or not listed yet: removals wait for the first list).
            if state.listed_services && state.served.remove(key) {
                self.sink.remove(key);
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let traffic = self.traffic_policy(key, &stores.traffic);
        let accounts = pod_accounts(&stores.pods, &key.namespace, &own);
        let result = service_with_accounts(&service, &own, &accounts);
        let in_scope = |id: &ObjectId| {
            id.1 == key.namespace
                && ((id.0 == "Service" && id.2 == key.name)
                    || (id.0 == "EndpointSlice" && own.iter().any(|s| s.metadata.name.as_ref() == Some(&id.2))))
        };
        let uid = |id: &ObjectId| match id.0.as_str() {
            "Service" => service.metadata.uid.clone(),
            _ => own.iter().find(|s| s.metadata.name.as_ref() == Some(&id.2)).and_then(|s| s.metadata.uid.clone()),
        };
        match result {
            Ok(mut model) => {
                self.problems.report(in_scope, Vec::new(), uid);
                model.traffic_policy = traffic;
                self.sink.upsert(model);
                state.served.insert(key.clone());
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
            }
            // The Service keeps what was served before.
            Err(problems) => self.problems.report(in_scope, problems, uid),
        }
    }
}

impl KubernetesRegistry {
    /// The valid TrafficPolicy targeting `key` (the first by name when several do).
    fn traffic_policy(
        &self,
        key: &ServiceKey,
        traffic: &Store<TrafficPolicy>,
    ) -> Option<mesh_registry::model::TrafficPolicy> {
        let mut candidates: Vec<_> =
            traffic.state().into_iter().filter(|t| traffic_target(t).as_ref() == Some(key)).collect();
        candidates.sort_by_key(|t| t.name_any());
        if candidates.len() > 1 {
            let names: Vec<String> = candidates.iter().map(|t| t.name_any()).collect();
            tracing::warn!(service = %key, policies = ?names, "several TrafficPolicies target one Service; using the first by name");
        }
        let first = candidates.first()?;
        let id: ObjectId = ("TrafficPolicy".into(), key.namespace.clone(), first.name_any());
        let in_scope = |other: &ObjectId| other == &id;
        let uid = |_: &ObjectId| first.metadata.uid.clone();
        match traffic_from(first) {
            Ok((_, policy)) => {
                self.problems.report(in_scope, Vec::new(), uid);
                Some(policy)
            }
            Err(problems) => {
                self.problems.report(in_scope, problems, uid);
                None
            }
        }
    }

    /// Replaces the routes and authorizations with the valid ones.
    fn apply_policies(&self, stores: &PolicyStores) {
        let http: Vec<HTTPRoute> = stores.http_routes.state().iter().map(|r| HTTPRoute::clone(r)).collect();
        let grpc: Vec<GRPCRoute> = stores.grpc_routes.state().iter().map(|r| GRPCRoute::clone(r)).collect();
        let (routes, mut problems) = routes_from(&http, &grpc);
        let all: Vec<AuthorizationPolicy> =
            stores.authorizations.state().iter().map(|a| AuthorizationPolicy::clone(a)).collect();
        let (valid, found) = authorizations_from(&all);
        problems.extend(found);
        self.sink.replace_policies(routes, valid);
        self.stats.applied.fetch_add(1, Ordering::Relaxed);
        let in_scope = |id: &ObjectId| matches!(id.0.as_str(), "AuthorizationPolicy" | "HTTPRoute" | "GRPCRoute");
        let uid = |id: &ObjectId| match id.0.as_str() {
            "AuthorizationPolicy" => {
                stores.authorizations.get(&ObjectRef::new(&id.2).within(&id.1))?.metadata.uid.clone()
            }
            "HTTPRoute" => stores.http_routes.get(&ObjectRef::new(&id.2).within(&id.1))?.metadata.uid.clone(),
            "GRPCRoute" => stores.grpc_routes.get(&ObjectRef::new(&id.2).within(&id.1))?.metadata.uid.clone(),
            _ => None,
        };
        self.problems.report(in_scope, problems, uid);
    }
}

/// The reflectors' stores a Service is computed from.
struct Stores {
    services: Store<KubeService>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    traffic: Store<TrafficPolicy>,
}

/// Keeps of a Pod only what the registry reads (its ServiceAccount), so the
/// reflector holds little per Pod.
fn keep_service_account(pod: &mut Pod) {
    let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone());
    pod.spec = Some(PodSpec { service_account_name: account, ..Default::default() });
    pod.status = None;
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.labels = None;
    pod.metadata.owner_references = None;
}

/// The ServiceAccount of each Pod the slices' endpoints refer to.
fn pod_accounts(pods: &Store<Pod>, namespace: &str, slices: &[EndpointSlice]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let names = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter_map(|e| e.target_ref.as_ref())
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .filter_map(|r| r.name.as_deref());
    for name in names {
        // A Pod not seen yet says nothing (its event recomputes the Service);
        // one without an account runs as `default`, as Kubernetes defaults it.
        if let Some(pod) = pods.get(&ObjectRef::new(name).within(namespace)) {
            let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone());
            out.insert(name.to_string(), account.unwrap_or_else(|| "default".to_string()));
        }
    }
    out
}

/// The Services whose EndpointSlices refer to a Pod.
fn services_backed_by(slices: &Store<EndpointSlice>, namespace: &str, pod: &str) -> BTreeSet<ServiceKey> {
    slices
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
        .filter(|s| {
            s.endpoints.iter().any(|e| {
                e.target_ref
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some("Pod") && r.name.as_deref() == Some(pod))
            })
        })
        .filter_map(|s| slice_service_key(s))
        .collect()
}

/// The reflectors' stores the policies are computed from.
struct PolicyStores {
    authorizations: Store<AuthorizationPolicy>,
    http_routes: Store<HTTPRoute>,
    grpc_routes: Store<GRPCRoute>,
}

/// A reflector on every object of `K`, each event meaning "the policies changed".
fn policy_reflector<K>(client: &Client, access: Access, kind: Kind) -> (Store<K>, stream::BoxStream<'static, Item>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let events = reflector::reflector(writer, watcher(access.all::<K>(client), watcher::Config::default()))
        .default_backoff()
        .map(move |event| {
            event
                .map(|e| match e {
                    watcher::Event::Init => Change::None,
                    watcher::Event::InitDone => Change::Listed(kind),
                    _ => Change::Policies,
                })
                .map_err(|e| (kind, e))
        })
        .boxed();
    (store, events)
}

/// What the watch loop remembers.
struct State {
    /// Services written to the sink.
    served: BTreeSet<ServiceKey>,
    /// Whether the Services have been listed (removals wait for it).
    listed_services: bool,
    /// The Service each TrafficPolicy (namespace, name) targets.
    traffic_targets: BTreeMap<(String, String), ServiceKey>,
    /// Kinds listed (or, for policy kinds, found missing).
    settled: BTreeSet<Kind>,
}

/// Whether a watch failed because its kind does not exist (CRD not installed).
fn not_installed(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404)
}

/// The EndpointSlices of one Service.
fn slices_of(slices: &Store<EndpointSlice>, key: &ServiceKey) -> Vec<EndpointSlice> {
    slices
        .state()
        .iter()
        .filter(|s| slice_service_key(s).as_ref() == Some(key))
        .map(|s| EndpointSlice::clone(s))
        .collect()
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

/// The Service a TrafficPolicy targets.
fn traffic_target(policy: &TrafficPolicy) -> Option<ServiceKey> {
    Some(ServiceKey::new(policy.namespace()?, policy.spec.target_ref.name.clone()))
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
fn slice_service_key(slice: &EndpointSlice) -> Option<ServiceKey> {
    Some(ServiceKey::new(slice.namespace()?, slice.labels().get(SERVICE_NAME_LABEL)?.clone()))
}
