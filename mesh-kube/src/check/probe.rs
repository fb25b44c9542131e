//! `meshctl check`'s live probe, the pure half: which two meshed workloads
//! to probe between ([`choose`]) and what the target's authorization should
//! decide for the source ([`expected`]), computed from the cluster's
//! objects with the control plane's own translation, independently of the
//! proxies whose answer it judges.

use mesh_identity::spiffe::SpiffeId;
use mesh_policy::inbound::{Client, InboundPolicy};
use mesh_policy::model::ServiceKey;
use mesh_registry::model::RegistrySnapshot;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A meshed pod (one with the proxy container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels (Services select by them).
    pub labels: BTreeMap<String, String>,
    /// Its ServiceAccount.
    pub service_account: String,
    /// Its IP, once it has one.
    pub ip: Option<IpAddr>,
    /// Whether its proxy reports ready.
    pub proxy_ready: bool,
    /// Its proxy's admin port.
    pub admin_port: u16,
}

impl Workload {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Service with a selector, as a probe target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its selector (Services without one are never targets).
    pub selector: BTreeMap<String, String>,
    /// Its ports.
    pub ports: Vec<u16>,
}

impl Service {
    fn selects(&self, w: &Workload) -> bool {
        !self.selector.is_empty()
            && w.namespace == self.namespace
            && self.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
    }
}

/// Two workloads to probe between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The pod whose proxy probes.
    pub source: Workload,
    /// The target Service.
    pub service: ServiceKey,
    /// Its port.
    pub port: u16,
}

impl Pair {
    /// The target as the proxy takes it: `name.namespace:port`.
    pub fn target(&self) -> String {
        format!("{}.{}:{}", self.service.name, self.service.namespace, self.port)
    }
}

/// What [`choose`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Probe between these.
    Probe(Pair),
    /// Nothing to probe between (why).
    Skip(String),
    /// The flags name something that cannot be probed (why).
    Invalid(String),
}

/// Picks a source pod with a ready proxy (`from`: `namespace/pod`) and a
/// meshed target Service (`to`: `name.namespace:port`) that it does not
/// itself back. Without flags, the first pair (by namespace and name; a
/// source in the target's namespace first) that `allowed` says the policy
/// admits, else the first pair: a probe that shows traffic flowing says
/// more than one that shows a denial.
pub fn choose(
    workloads: &[Workload],
    services: &[Service],
    from: Option<&str>,
    to: Option<&str>,
    allowed: impl Fn(&Workload, &ServiceKey, u16) -> bool,
) -> Choice {
    let mut sources: Vec<&Workload> = workloads.iter().filter(|w| w.proxy_ready).collect();
    sources.sort_by_key(|w| (w.namespace.clone(), w.name.clone()));
    if let Some(from) = from {
        match sources.iter().find(|w| w.id() == from) {
            Some(w) => sources = vec![*w],
            None => return Choice::Invalid(format!("--probe-from {from}: no meshed pod with a ready proxy there")),
        }
    }
    let mut targets: Vec<(&Service, u16)> = services
        .iter()
        .filter(|s| workloads.iter().any(|w| w.proxy_ready && s.selects(w)))
        .flat_map(|s| s.ports.first().map(|p| (s, *p)))
        .collect();
    targets.sort_by_key(|(s, _)| (s.namespace.clone(), s.name.clone()));
    if let Some(to) = to {
        let named = to.rsplit_once(':').and_then(|(host, port)| {
            let (name, ns) = host.split_once('.')?;
            let port: u16 = port.parse().ok()?;
            let s = services.iter().find(|s| s.name == name && s.namespace == ns && s.ports.contains(&port))?;
            Some((s, port))
        });
        match named {
            Some((s, port)) if workloads.iter().any(|w| w.proxy_ready && s.selects(w)) => targets = vec![(s, port)],
            Some(_) => return Choice::Invalid(format!("--probe-to {to}: no meshed pod with a ready proxy backs it")),
            None => return Choice::Invalid(format!("--probe-to {to}: no such Service port (name.namespace:port)")),
        }
    }
    let mut pairs = Vec::new();
    for (s, port) in &targets {
        let mut ordered: Vec<&&Workload> = sources.iter().filter(|w| !s.selects(w)).collect();
        ordered.sort_by_key(|w| w.namespace != s.namespace);
        pairs.extend(ordered.into_iter().map(|w| Pair {
            source: (*w).clone(),
            service: ServiceKey::new(&s.namespace, &s.name),
            port: *port,
        }));
    }
    let first_allowed = pairs.iter().position(|p| allowed(&p.source, &p.service, p.port));
    match first_allowed.or(if pairs.is_empty() { None } else { Some(0) }) {
        Some(i) => Choice::Probe(pairs.swap_remove(i)),
        None if from.is_some() || to.is_some() => {
            Choice::Invalid("the source backs the target Service itself; probe between two workloads".into())
        }
        None => Choice::Skip(format!(
            "skipped: it needs two meshed workloads (a pod with a ready proxy and a meshed Service it does not back); \
             found {} ready meshed pods and {} meshed Services",
            sources.len(),
            targets.len()
        )),
    }
}

/// Whether the target's authorization should admit `source_identity`
/// (connecting from `source_ip`) on Service `service` port `port`, and by
/// which `policy/rule`; decided as the target proxy decides a probe (as for
/// a connection: rules that match HTTP requests do not apply).
pub fn expected(
    snapshot: &RegistrySnapshot,
    source_identity: &str,
    source_ip: Option<IpAddr>,
    service: &ServiceKey,
    port: u16,
) -> Result<(bool, String), String> {
    let svc = snapshot
        .services
        .iter()
        .find(|s| &s.key == service)
        .ok_or_else(|| format!("the mesh's view of Service {service} is not valid (see its Events)"))?;
    let target_port = svc.port(port).map(|p| p.target_port).ok_or_else(|| format!("{service} has no port {port}"))?;
    let td = source_identity
        .parse::<SpiffeId>()
        .map_err(|e| format!("the source's identity {source_identity:?} is not a mesh SPIFFE ID: {e}"))?;
    let pb = mesh_registry::translate::inbound_policy(
        snapshot,
        Some(td.trust_domain()),
        &service.namespace,
        &svc.service_account,
        target_port,
    );
    let policy = InboundPolicy::compile(&pb).map_err(|e| format!("the policy for {service} does not compile: {e}"))?;
    let client =
        Client { identity: Some(source_identity.to_string()), ip: source_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])) };
    let v = policy.authorize(&client, None);
    Ok((v.allowed, format!("{}/{}", v.policy, v.rule)))
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;
