//! The index the store answers from: services by key, by virtual address and
//! by endpoint address, and the policies that select them. Rebuilt whole on
//! each change (registries are small; answers stay simple and consistent).

use crate::model::{RegistrySnapshot, Service, ServiceKey, ServicePort};
use crate::target::{IdentityNaming, Resolution, ResolvedEndpoint, ServiceMeta, Target};
use mesh_policy::model::{AuthorizationPolicy, RoutePolicy};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A consistent, read-only view of a registry: what every API (and offline
/// tools such as `meshctl policy explain`) answers from.
#[derive(Debug, Clone, Default)]
pub struct Index {
    services: HashMap<ServiceKey, Arc<Service>>,
    routes: Vec<Arc<RoutePolicy>>,
    authorizations: Vec<Arc<AuthorizationPolicy>>,
    identity: Option<IdentityNaming>,
    /// `vip:port` → service port.
    vips: HashMap<SocketAddr, (ServiceKey, u16)>,
    /// endpoint address → service port (the first service that lists it).
    endpoints: HashMap<SocketAddr, (ServiceKey, u16)>,
}

/// A target resolved to a service port.
#[derive(Debug, Clone, Copy)]
pub struct ServicePortRef<'a> {
    /// The service.
    pub service: &'a Service,
    /// The port the target names.
    pub port: &'a ServicePort,
    /// Set when the target is one endpoint's own address.
    pub endpoint: Option<SocketAddr>,
}

impl Index {
    /// An index of `snapshot`; `identity` names workload identities.
    pub fn new(snapshot: &RegistrySnapshot, identity: Option<IdentityNaming>) -> Self {
        let mut index = Self { identity, ..Self::default() };
        index.services = snapshot.services.iter().map(|s| (s.key.clone(), Arc::new(s.clone()))).collect();
        index.routes = snapshot.routes.iter().cloned().map(Arc::new).collect();
        index.authorizations = snapshot.authorizations.iter().cloned().map(Arc::new).collect();
        index.rebuild();
        index
    }

    /// How workload identities are named, when the mesh has a CA.
    pub fn identity(&self) -> Option<&IdentityNaming> {
        self.identity.as_ref()
    }

    /// A service by key.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key).map(|s| &**s)
    }

    /// Every service, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(|s| &**s)
    }

    /// The route policy routing `port` of `key`, if any (registries allow at
    /// most one; the first wins otherwise).
    pub fn route_policy(&self, key: &ServiceKey, port: u16) -> Option<&RoutePolicy> {
        self.routes.iter().map(|r| &**r).find(|r| &r.service == key && r.selects_port(port))
    }

    /// Every authorization policy, in registry order.
    pub fn authorizations(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.authorizations.iter().map(|a| &**a)
    }

    /// The service port a target names: by name, virtual IP, or one
    /// endpoint's address.
    pub fn service_port(&self, target: &Target) -> Option<ServicePortRef<'_>> {
        let (key, port, endpoint) = match target {
            Target::Service { key, port } => (key, *port, None),
            Target::Addr(addr) => match self.vips.get(addr) {
                Some((key, port)) => (key, *port, None),
                None => {
                    let (key, port) = self.endpoints.get(addr)?;
                    (key, *port, Some(*addr))
                }
            },
        };
        let service = self.services.get(key)?;
        let port = service.port(port)?;
        Some(ServicePortRef { service, port, endpoint })
    }

    /// The Destination answer for a target.
    pub fn resolve(&self, target: &Target) -> Resolution {
        let Some(found) = self.service_port(target) else {
            return Resolution::default();
        };
        let (svc, sp) = (found.service, found.port);
        let identity = self.identity.as_ref().map(|n| n.spiffe_id(&svc.key.namespace, &svc.service_account));
        let endpoints = svc
            .endpoints
            .iter()
            .map(|ep| {
                let addr = ep.addr_for(sp);
                let resolved =
                    ResolvedEndpoint { addr, weight: ep.weight, identity: identity.clone(), labels: ep.labels.clone() };
                (addr, resolved)
            })
            // A direct connection to one replica: that replica only.
            .filter(|(addr, _)| found.endpoint.is_none_or(|only| only == *addr))
            .collect();
        let meta = ServiceMeta { key: svc.key.clone(), port: sp.port, protocol: sp.protocol };
        Resolution { service: Some(meta), endpoints }
    }

    /// Sets how endpoint identities are named.
    pub fn set_identity(&mut self, identity: Option<IdentityNaming>) {
        self.identity = identity;
    }

    /// Replaces everything with `snapshot`, keeping the identity naming.
    pub fn replace_all(&mut self, snapshot: &RegistrySnapshot) {
        let identity = self.identity.take();
        *self = Self::new(snapshot, identity);
    }

    /// Adds or replaces one service.
    pub fn upsert(&mut self, service: Service) {
        self.services.insert(service.key.clone(), Arc::new(service));
        self.rebuild();
    }

    /// Removes one service; whether it was there.
    pub fn remove(&mut self, key: &ServiceKey) -> bool {
        let removed = self.services.remove(key).is_some();
        if removed {
            self.rebuild();
        }
        removed
    }

    /// Replaces every route and authorization policy.
    pub fn replace_policies(&mut self, routes: Vec<RoutePolicy>, authorizations: Vec<AuthorizationPolicy>) {
        self.routes = routes.into_iter().map(Arc::new).collect();
        self.authorizations = authorizations.into_iter().map(Arc::new).collect();
    }

    /// Numbers of services and endpoints.
    pub fn size(&self) -> (usize, usize) {
        (self.services.len(), self.services.values().map(|s| s.endpoints.len()).sum())
    }

    fn rebuild(&mut self) {
        self.vips.clear();
        self.endpoints.clear();
        for svc in self.services.values() {
            for port in &svc.ports {
                for ip in &svc.addresses {
                    self.vips.insert(SocketAddr::new(*ip, port.port), (svc.key.clone(), port.port));
                }
                for ep in &svc.endpoints {
                    self.endpoints.entry(ep.addr_for(port)).or_insert_with(|| (svc.key.clone(), port.port));
                }
            }
        }
    }
}
