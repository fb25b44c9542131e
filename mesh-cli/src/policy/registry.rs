//! Policies from a registry — a file, or a cluster read by the control
//! plane's own Kubernetes source — translated by the control plane's own
//! code ([`mesh_registry::translate`]) over an [`Index`], exactly as the
//! control plane would serve them.

use super::explain::Destination;
use anyhow::anyhow;
use mesh_kube::api::k8s_openapi::api::core::v1::Secret;
use mesh_kube::api::{Api, Client};
use mesh_policy::model::{AuthorizationPolicy, RoutePolicy};
use mesh_proto::policy as pb;
use mesh_registry::index::Index;
use mesh_registry::model::Protocol;
use mesh_registry::model::{RegistrySnapshot, Service, ServiceKey};
use mesh_registry::sink::RegistrySink;
use mesh_registry::target::{IdentityNaming, Target};
use mesh_registry::translate::{self as policy, InboundTarget};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Collects what the Kubernetes source writes.
struct IndexSink(Mutex<Index>);

impl IndexSink {
    fn with(&self, f: impl FnOnce(&mut Index)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl RegistrySink for IndexSink {
    fn replace_all(&self, snapshot: &RegistrySnapshot) {
        self.with(|i| i.replace_all(snapshot));
    }
    fn upsert(&self, service: Service) {
        self.with(|i| i.upsert(service));
    }
    fn remove(&self, key: &ServiceKey) {
        self.with(|i| {
            i.remove(key);
        });
    }
    fn replace_policies(&self, routes: Vec<RoutePolicy>, authorizations: Vec<AuthorizationPolicy>) {
        self.with(|i| i.replace_policies(routes, authorizations));
    }
}

/// The trust domain of the mesh installed in the cluster (its identity Secret), if any.
async fn installed_trust_domain(client: &Client) -> Option<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "mesh-system");
    let secret = secrets.get_opt(mesh_kube::install::IDENTITY_SECRET).await.ok()??;
    let td = secret.data?.get(mesh_identity::dir::TRUST_DOMAIN)?.0.clone();
    Some(String::from_utf8(td).ok()?.trim().to_string())
}

/// A registry, indexed.
#[derive(Debug)]
pub struct RegistrySource {
    index: Index,
}

impl RegistrySource {
    /// Loads and validates `path` (every problem of an invalid file is in
    /// the error); `trust_domain` names workload identities.
    pub fn load(path: &Path, trust_domain: Option<&str>) -> anyhow::Result<Self> {
        let snapshot = mesh_registry::file::load(path).map_err(|e| anyhow!("{e}"))?;
        let identity = trust_domain.map(|td| IdentityNaming { trust_domain: td.to_string() });
        Ok(Self { index: Index::new(&snapshot, identity) })
    }

    /// Reads the cluster as the control plane's Kubernetes registry does
    /// (without writing anything to it); `trust_domain` names identities,
    /// by default the installed mesh's.
    pub async fn load_cluster(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
        trust_domain: Option<&str>,
    ) -> anyhow::Result<(Self, Option<String>)> {
        let client = mesh_kube::client::connect(kubeconfig, context).await?;
        let trust_domain = match trust_domain {
            Some(td) => Some(td.to_string()),
            None => installed_trust_domain(&client).await,
        };
        let sink = Arc::new(IndexSink(Mutex::new(Index::new(&RegistrySnapshot::default(), None))));
        let registry = mesh_kube::registry::KubernetesRegistry::new(client, sink.clone()).read_only();
        let mut synced = registry.synced();
        let watch = tokio::spawn(registry.run());
        let listed = tokio::time::timeout(Duration::from_secs(30), synced.wait_for(|done| *done)).await;
        watch.abort();
        if !matches!(listed, Ok(Ok(_))) {
            anyhow::bail!(
                "could not list Services, EndpointSlices and the mesh's policies within 30s (is the cluster reachable, \
                 and may you list them?)"
            );
        }
        let mut index = std::mem::replace(
            &mut *sink.0.lock().unwrap_or_else(PoisonError::into_inner),
            Index::new(&RegistrySnapshot::default(), None),
        );
        index.set_identity(trust_domain.as_ref().map(|td| IdentityNaming { trust_domain: td.clone() }));
        Ok((Self { index }, trust_domain))
    }

    /// The outbound policy for `target`; an error names the known services
    /// when the registry has none for it.
    pub fn outbound(&self, target: &Target) -> anyhow::Result<(pb::OutboundPolicy, bool)> {
        let Some(found) = self.index.service_port(target) else {
            return Err(anyhow!("unknown target {target}: {}", self.known()));
        };
        let opaque = found.port.protocol == Protocol::Opaque;
        Ok((policy::outbound(&self.index, target), !opaque))
    }

    fn known(&self) -> String {
        let mut all: Vec<String> =
            self.index.services().flat_map(|s| s.ports.iter().map(move |p| format!("{}:{}", s.key, p.port))).collect();
        all.sort();
        if all.is_empty() {
            return "the registry has no services".into();
        }
        let more = all.len().saturating_sub(20);
        all.truncate(20);
        let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!("the registry's service ports are {}{tail}", all.join(", "))
    }

    /// The destination workloads of a backend (`resolve` as the proxy
    /// resolves it): their namespace and service account, and the inbound
    /// policy of every port their proxies are dialled on.
    pub fn destination(&self, backend: &str, resolve: &str) -> Destination {
        let mut d =
            Destination { backend: backend.to_string(), workload: None, policies: Vec::new(), notes: Vec::new() };
        let found = resolve.parse::<Target>().ok().and_then(|t| self.index.service_port(&t));
        let Some(found) = found else {
            d.notes.push(format!("{resolve} is not a service in the registry: requests to it fail (no endpoints)"));
            return d;
        };
        let svc = found.service;
        let (ns, sa) = (svc.key.namespace.clone(), svc.service_account.clone());
        let mut ports: Vec<u16> = svc
            .endpoints
            .iter()
            .map(|e| e.addr_for(found.port))
            .filter(|a| found.endpoint.is_none_or(|only| only == *a))
            .map(|a| a.port())
            .collect();
        if ports.is_empty() {
            d.notes.push(format!("{} has no endpoints: shown for its targetPort", svc.key));
            ports.push(found.port.target_port);
        }
        let per_port =
            ports.into_iter().map(|p| (p, policy::inbound(&self.index, &InboundTarget::new(&ns, &sa, p)))).collect();
        d.policies = Destination::group(per_port);
        d.workload = Some((ns, sa));
        d
    }

    /// The inbound policy of a workload port named on the command line.
    pub fn inbound(&self, namespace: &str, service_account: &str, port: u16) -> pb::InboundPolicy {
        policy::inbound(&self.index, &InboundTarget::new(namespace, service_account, port))
    }
}
