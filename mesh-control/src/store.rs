//! The store: the control plane's index of services and endpoints, and the
//! watches proxies hold on it.
//!
//! Registries write into the store (a whole snapshot from the file registry;
//! per-service upserts from a Kubernetes controller); the discovery API reads
//! from it. Each watched target has its own `watch` channel, so a change to one
//! service wakes only the streams that asked about it.

use crate::registry::model::{Protocol, RegistrySnapshot, Service, ServiceKey, ServicePort};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// What a proxy asks to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A service port by name: `name.namespace[.svc[.<domain>]]:port`.
    Service {
        /// The service.
        key: ServiceKey,
        /// The service port.
        port: u16,
    },
    /// An address: a service's virtual IP, or one endpoint's own address.
    Addr(SocketAddr),
}

/// A target string that is neither `name[.namespace...]:port` nor `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target {target:?}: {reason} (expected name.namespace:port or ip:port)")]
pub struct InvalidTarget {
    target: String,
    reason: &'static str,
}

impl FromStr for Target {
    type Err = InvalidTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| InvalidTarget { target: s.to_string(), reason };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port.parse().map_err(|_| bad("port is not a number in 1-65535"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(bad("malformed IP address"));
        }
        let mut labels = host.trim_end_matches('.').split('.');
        let name = labels.next().filter(|n| !n.is_empty()).ok_or_else(|| bad("empty name"))?;
        let namespace = labels.next().unwrap_or("default");
        // Anything after the namespace must be the `svc[.<cluster domain>]` suffix.
        match labels.next() {
            None | Some("svc") => {}
            Some(_) => return Err(bad("only name.namespace.svc[.domain] names are meshed")),
        }
        Ok(Target::Service { key: ServiceKey::new(namespace, name), port })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Service { key, port } => write!(f, "{key}:{port}"),
            Target::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// Service-level facts sent with a resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMeta {
    /// The service.
    pub key: ServiceKey,
    /// The service port the target resolved to.
    pub port: u16,
    /// Its protocol hint.
    pub protocol: Protocol,
}

/// One endpoint as proxies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEndpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share of traffic.
    pub weight: u32,
    /// The identity its proxy presents, when known.
    pub identity: Option<String>,
    /// Labels for metrics.
    pub labels: BTreeMap<String, String>,
}

/// The answer for one target at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    /// The service this target names, or `None` when it is not known.
    pub service: Option<ServiceMeta>,
    /// Endpoints by address.
    pub endpoints: BTreeMap<SocketAddr, ResolvedEndpoint>,
}

/// Shared, cloneable handle to the index.
#[derive(Debug, Clone, Default)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    services: HashMap<ServiceKey, Arc<Service>>,
    /// `vip:port` → service port.
    vips: HashMap<SocketAddr, (ServiceKey, u16)>,
    /// endpoint address → service port (the first service that lists it).
    endpoints: HashMap<SocketAddr, (ServiceKey, u16)>,
    watches: HashMap<Target, watch::Sender<Arc<Resolution>>>,
    identity: Option<IdentityNaming>,
}

/// How endpoint identities are named: `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityNaming {
    /// The mesh's trust domain, for example `cluster.local`.
    pub trust_domain: String,
}

impl IdentityNaming {
    /// The SPIFFE ID of a workload.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!("spiffe://{}/ns/{}/sa/{}", self.trust_domain, namespace, service_account)
    }
}

impl Store {
    /// An empty store; `identity` names endpoint identities once the mesh has a CA.
    pub fn new(identity: Option<IdentityNaming>) -> Self {
        let inner = Inner { identity, ..Inner::default() };
        Self { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update; the
        // index is rebuilt whole on each change, so its data is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets how endpoint identities are named (once the CA is known).
    pub fn set_identity(&self, identity: Option<IdentityNaming>) {
        let mut inner = self.lock();
        inner.identity = identity;
        inner.reindex_and_notify();
    }

    /// Replaces everything with `snapshot` and notifies the watches whose
    /// answer changed.
    pub fn replace_all(&self, snapshot: &RegistrySnapshot) {
        let mut inner = self.lock();
        inner.services = snapshot
            .services
            .iter()
            .map(|s| (s.key.clone(), Arc::new(s.clone())))
            .collect();
        inner.reindex_and_notify();
    }

    /// Adds or replaces one service.
    pub fn upsert(&self, service: Service) {
        let mut inner = self.lock();
        inner.services.insert(service.key.clone(), Arc::new(service));
        inner.reindex_and_notify();
    }

    /// Removes one service.
    pub fn remove(&self, key: &ServiceKey) {
        let mut inner = self.lock();
        if inner.services.remove(key).is_some() {
            inner.reindex_and_notify();
        }
    }

    /// Subscribes to a target's resolution; the receiver holds the current
    /// answer and is notified on every change.
    pub fn watch(&self, target: &Target) -> watch::Receiver<Arc<Resolution>> {
        let mut inner = self.lock();
        if let Some(tx) = inner.watches.get(target) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(inner.resolve(target)));
        inner.watches.insert(target.clone(), tx);
        rx
    }

    /// The current answer for a target, without watching.
    pub fn resolve(&self, target: &Target) -> Resolution {
        self.lock().resolve(target)
    }

    /// Number of open watch streams (receivers) across targets.
    pub fn watchers(&self) -> usize {
        self.lock().watches.values().map(|w| w.receiver_count()).sum()
    }

    /// Numbers of services and endpoints in the index.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        let endpoints = inner.services.values().map(|s| s.endpoints.len()).sum();
        (inner.services.len(), endpoints)
    }
}

impl Inner {
    fn reindex_and_notify(&mut self) {
        self.vips.clear();
        self.endpoints.clear();
        for svc in self.services.values() {
            for port in &svc.ports {
                for ip in &svc.addresses {
                    self.vips
                        .insert(SocketAddr::new(*ip, port.port), (svc.key.clone(), port.port));
                }
                for ep in &svc.endpoints {
                    self.endpoints
                        .entry(ep.addr_for(port))
                        .or_insert_with(|| (svc.key.clone(), port.port));
                }
            }
        }
        // Drop watches nobody holds any more, then refresh the rest.
        self.watches.retain(|_, tx| tx.receiver_count() > 0);
        let targets: Vec<Target> = self.watches.keys().cloned().collect();
        for target in targets {
            let next = self.resolve(&target);
            if let Some(tx) = self.watches.get(&target) {
                tx.send_if_modified(|cur| {
                    if **cur == next {
                        return false;
                    }
                    *cur = Arc::new(next);
                    true
                });
            }
        }
    }

    fn resolve(&self, target: &Target) -> Resolution {
        match target {
            Target::Service { key, port } => self.resolve_service(key, *port),
            Target::Addr(addr) => {
                if let Some((key, port)) = self.vips.get(addr) {
                    return self.resolve_service(key, *port);
                }
                let Some((key, port)) = self.endpoints.get(addr) else {
                    return Resolution::default();
                };
                // A direct connection to one replica: that replica only.
                let mut r = self.resolve_service(key, *port);
                r.endpoints.retain(|a, _| a == addr);
                r
            }
        }
    }

    fn resolve_service(&self, key: &ServiceKey, port: u16) -> Resolution {
        let Some(svc) = self.services.get(key) else {
            return Resolution::default();
        };
        let Some(sp) = svc.port(port) else {
            return Resolution::default();
        };
        let identity = self
            .identity
            .as_ref()
            .map(|n| n.spiffe_id(&svc.key.namespace, &svc.service_account));
        let endpoints = svc
            .endpoints
            .iter()
            .map(|ep| {
                let addr = ep.addr_for(sp);
                let resolved = ResolvedEndpoint {
                    addr,
                    weight: ep.weight,
                    identity: identity.clone(),
                    labels: ep.labels.clone(),
                };
                (addr, resolved)
            })
            .collect();
        Resolution { service: Some(meta(svc, sp)), endpoints }
    }
}

fn meta(svc: &Service, port: &ServicePort) -> ServiceMeta {
    ServiceMeta { key: svc.key.clone(), port: port.port, protocol: port.protocol }
}

#[cfg(test)]
mod tests;
