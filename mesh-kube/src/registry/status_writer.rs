//! Writes the status [`super::status`] decides onto HTTPRoutes, GRPCRoutes,
//! AuthorizationPolicies and TrafficPolicies, from the watch's reflector
//! stores: only while this replica leads (see [`crate::lease`]), only once
//! the registry has synced (before, every Service would look missing), and
//! only what changed. A change to any watched object wakes it; it waits a
//! moment so a burst of changes costs one pass.
//!
//! Writes are server-side apply on the status subresource as
//! [`FIELD_MANAGER`](crate::crds::FIELD_MANAGER). A route's `status.parents`
//! is an atomic list shared with other controllers (Gateways), so its apply
//! carries every other controller's entries and the `resourceVersion` they
//! were read at: a concurrent write makes it fail (409) rather than drop
//! theirs, and the watch event of that write brings a new pass.

use super::policy::{authorizations_from, traffic_from};
use super::report::{CONTROLLER, ObjectId};
use super::routes::routes_from;
use super::status::{
    Wanted, grpc_backends, http_backends, policy_conditions, policy_status, problems_of, route_conditions,
    route_status, split_conflict,
};
use crate::crd::{AuthorizationPolicy, TrafficPolicy};
use crate::crds::FIELD_MANAGER;
use crate::gateway::{GRPCRoute, HTTPRoute};
use crate::rbac;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use mesh_policy::model::ServiceKey;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How long a pass waits after a change for more changes.
const SETTLE: Duration = Duration::from_millis(100);
/// When a write failed (not for a conflict), how long until the next pass.
const RETRY: Duration = Duration::from_secs(5);

/// The reflector stores the statuses are computed from.
pub(super) struct StatusStores {
    pub(super) services: Store<KubeService>,
    pub(super) http_routes: Store<HTTPRoute>,
    pub(super) grpc_routes: Store<GRPCRoute>,
    pub(super) authorizations: Store<AuthorizationPolicy>,
    pub(super) traffic: Store<TrafficPolicy>,
}

/// One status to write.
#[derive(Debug)]
struct Update {
    id: ObjectId,
    /// The `resourceVersion` it was computed from.
    version: String,
    /// The apply body (`apiVersion`, `kind`, `status`, and for routes `metadata.resourceVersion`).
    body: Value,
}

/// How a write went.
enum Written {
    Yes,
    /// The object changed (or went) meanwhile: its watch event brings a new pass.
    Changed,
    /// Another error: try again after [`RETRY`].
    Failed,
}

/// Writes statuses while this replica leads (see the module docs).
pub(super) struct StatusWriter {
    pub(super) client: Client,
    pub(super) changed: Arc<Notify>,
    pub(super) leading: watch::Receiver<bool>,
    pub(super) synced: watch::Receiver<bool>,
    pub(super) writes: Arc<AtomicU64>,
}

impl StatusWriter {
    /// Runs until dropped.
    pub(super) async fn run(mut self, stores: StatusStores) {
        // The resourceVersion each object had when its status was last
        // written: until the watch shows the write, the object is skipped
        // (the cache is behind; computing again would write twice).
        let mut written: BTreeMap<ObjectId, String> = BTreeMap::new();
        loop {
            if self.synced.wait_for(|s| *s).await.is_err() || self.leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            tokio::time::sleep(SETTLE).await;
            let mut failed = false;
            let now = Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()));
            // Entries whose object has moved on (or gone) are no longer needed.
            written.retain(|id, version| current_version(&stores, id).as_ref() == Some(version));
            for update in updates(&stores, &now) {
                if !*self.leading.borrow() {
                    break;
                }
                if written.get(&update.id) == Some(&update.version) {
                    continue;
                }
                match self.write(&update).await {
                    Written::Yes => {
                        self.writes.fetch_add(1, Ordering::Relaxed);
                        written.insert(update.id, update.version);
                    }
                    Written::Changed => {}
                    Written::Failed => failed = true,
                }
            }
            tokio::select! {
                () = self.changed.notified() => {}
                () = tokio::time::sleep(RETRY), if failed => {}
                changed = self.leading.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn write(&self, update: &Update) -> Written {
        let (kind, namespace, name) = &update.id;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(&update.body);
        let result = match kind.as_str() {
            "HTTPRoute" => rbac::HTTP_ROUTES_STATUS
                .status_namespaced::<HTTPRoute>(&self.client, namespace)
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
            "GRPCRoute" => rbac::GRPC_ROUTES_STATUS
                .status_namespaced::<GRPCRoute>(&self.client, namespace)
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
            "AuthorizationPolicy" => rbac::AUTHORIZATION_POLICIES_STATUS
                .status_namespaced::<AuthorizationPolicy>(&self.client, namespace)
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
            _ => rbac::TRAFFIC_POLICIES_STATUS
                .status_namespaced::<TrafficPolicy>(&self.client, namespace)
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
        };
        match result {
            Ok(()) => {
                tracing::debug!(%kind, %namespace, %name, "status written");
                Written::Yes
            }
            // Written (or deleted) meanwhile: its watch event brings a new pass.
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                tracing::debug!(%kind, %namespace, %name, code = status.code, "status not written: the object changed");
                Written::Changed
            }
            Err(error) => {
                tracing::warn!(%kind, %namespace, %name, %error, "cannot write status; trying again shortly");
                Written::Failed
            }
        }
    }
}

/// The `resourceVersion` of the object `id` in the stores.
fn current_version(stores: &StatusStores, id: &ObjectId) -> Option<String> {
    let (kind, namespace, name) = id;
    match kind.as_str() {
        "HTTPRoute" => version_in(&stores.http_routes, namespace, name),
        "GRPCRoute" => version_in(&stores.grpc_routes, namespace, name),
        "AuthorizationPolicy" => version_in(&stores.authorizations, namespace, name),
        _ => version_in(&stores.traffic, namespace, name),
    }
}

fn version_in<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<String>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))?.meta().resource_version.clone()
}

/// Every status that differs from what its object says.
fn updates(stores: &StatusStores, now: &Time) -> Vec<Update> {
    let services = |key: &ServiceKey| {
        let service = stores.services.get(&ObjectRef::new(&key.name).within(&key.namespace))?;
        let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
        Some(ports.into_iter().flatten().filter_map(|p| u16::try_from(p.port).ok()).collect::<Vec<u16>>())
    };
    let mut out = Vec::new();

    let http: Vec<HTTPRoute> = stores.http_routes.state().iter().map(|r| HTTPRoute::clone(r)).collect();
    let grpc: Vec<GRPCRoute> = stores.grpc_routes.state().iter().map(|r| GRPCRoute::clone(r)).collect();
    let (_, problems) = routes_from(&http, &grpc);
    for route in &http {
        let (namespace, name) = (route.namespace().unwrap_or_default(), route.name_any());
        let own = problems_of(&problems, "HTTPRoute", &namespace, &name);
        let ours = route_conditions(&namespace, &route.spec.parent_refs, &http_backends(route), &own, &services);
        let status = route_status(route.status.as_ref(), CONTROLLER, &ours, route.metadata.generation, now);
        if let Some(status) = status {
            out.push(route_update("HTTPRoute", &route.metadata.resource_version, namespace, name, &status));
        }
    }
    for route in &grpc {
        let (namespace, name) = (route.namespace().unwrap_or_default(), route.name_any());
        let own = problems_of(&problems, "GRPCRoute", &namespace, &name);
        let ours = route_conditions(&namespace, &route.spec.parent_refs, &grpc_backends(route), &own, &services);
        let status = route_status(route.status.as_ref(), CONTROLLER, &ours, route.metadata.generation, now);
        if let Some(status) = status {
            out.push(route_update("GRPCRoute", &route.metadata.resource_version, namespace, name, &status));
        }
    }

    let all: Vec<AuthorizationPolicy> =
        stores.authorizations.state().iter().map(|a| AuthorizationPolicy::clone(a)).collect();
    let (_, problems) = authorizations_from(&all);
    for policy in &all {
        let (namespace, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
        let (own, conflict) = split_conflict(problems_of(&problems, "AuthorizationPolicy", &namespace, &name));
        let target = ServiceKey::new(namespace.clone(), policy.spec.target_ref.name.clone());
        let port = policy.spec.target_ref.port.and_then(|p| u16::try_from(p).ok());
        let wanted = policy_conditions(&target, port, &own, conflict, &services);
        let existing = policy.status.as_ref();
        out.extend(policy_update("AuthorizationPolicy", policy, existing, &wanted, now));
    }

    // The watch serves the first TrafficPolicy by name for a Service; the others conflict.
    let traffic: Vec<TrafficPolicy> = stores.traffic.state().iter().map(|t| TrafficPolicy::clone(t)).collect();
    let mut first: BTreeMap<ServiceKey, String> = BTreeMap::new();
    for policy in &traffic {
        let target = ServiceKey::new(policy.namespace().unwrap_or_default(), policy.spec.target_ref.name.clone());
        let name = policy.name_any();
        first.entry(target).and_modify(|f| *f = f.clone().min(name.clone())).or_insert(name);
    }
    for policy in &traffic {
        let (namespace, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
        let own = match traffic_from(policy) {
            Ok(_) => Vec::new(),
            Err(problems) => problems_of(&problems, "TrafficPolicy", &namespace, &name),
        };
        let target = ServiceKey::new(namespace.clone(), policy.spec.target_ref.name.clone());
        let conflict = first.get(&target).filter(|f| **f != name).map(|f| {
            format!(
                "TrafficPolicy {f} also targets Service {namespace}/{} and is used (the first by name): \
                 merge the two or retarget this one",
                target.name
            )
        });
        let wanted = policy_conditions(&target, None, &own, conflict, &services);
        out.extend(policy_update("TrafficPolicy", policy, policy.status.as_ref(), &wanted, now));
    }
    out
}

fn route_update(
    kind: &str,
    version: &Option<String>,
    namespace: String,
    name: String,
    status: &crate::gateway::RouteStatus,
) -> Update {
    let version = version.clone().unwrap_or_default();
    let body = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": {"resourceVersion": version},
        "status": status,
    });
    Update { id: (kind.to_string(), namespace, name), version, body }
}

fn policy_update<K: kube::Resource>(
    kind: &str,
    policy: &K,
    existing: Option<&crate::crd::PolicyStatus>,
    wanted: &[Wanted],
    now: &Time,
) -> Option<Update> {
    let meta = policy.meta();
    let status = policy_status(existing, wanted, meta.generation, now)?;
    let body = json!({
        "apiVersion": format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        "kind": kind,
        "status": status,
    });
    let id = (kind.to_string(), meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
    Some(Update { id, version: meta.resource_version.clone().unwrap_or_default(), body })
}
