//! Policies from a registry file: translated by the control plane's own
//! code ([`mesh_registry::translate`]) over an [`Index`] of the file, exactly as
//! the control plane would serve them.

use super::explain::Destination;
use anyhow::anyhow;
use mesh_proto::policy as pb;
use mesh_registry::index::Index;
use mesh_registry::model::Protocol;
use mesh_registry::target::{IdentityNaming, Target};
use mesh_registry::translate::{self as policy, InboundTarget};
use std::path::Path;

/// A registry file, indexed.
#[derive(Debug)]
pub struct FileSource {
    index: Index,
}

impl FileSource {
    /// Loads and validates `path` (every problem of an invalid file is in
    /// the error); `trust_domain` names workload identities.
    pub fn load(path: &Path, trust_domain: Option<&str>) -> anyhow::Result<Self> {
        let snapshot = mesh_registry::file::load(path).map_err(|e| anyhow!("{e}"))?;
        let identity = trust_domain.map(|td| IdentityNaming { trust_domain: td.to_string() });
        Ok(Self { index: Index::new(&snapshot, identity) })
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
