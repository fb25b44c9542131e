//! A mesh in the pods: the control plane in the node namespace, whose
//! registry describes the server pod's endpoint at its pod IP, and a
//! transparent proxy in each pod as UID 2102, as the injector runs it.

use super::plan::{self, ProxyPorts};
use super::{Pods, give_proxy, spawn_in, wait};
use crate::bench::topology::{Admin, Mesh, MeshSpec, SERVER_ACCOUNT};
use crate::mesh::{self, Bins, ProxyIdentity, STARTUP, args};
use anyhow::{Context, bail};
use mesh_spec::{Endpoint, Port, RegistryFile, Service};
use std::net::{IpAddr, SocketAddr};

/// The registry of the pods: service `bench` on `port` with the server
/// pod's IP as its one endpoint, speaking `protocol`, as service account `bench`.
pub fn registry(protocol: &str, port: u16) -> RegistryFile {
    RegistryFile {
        services: vec![Service {
            service_account: Some(SERVER_ACCOUNT.into()),
            ports: vec![Port { protocol: Some(protocol.into()), ..Port::new(port) }],
            endpoints: vec![Endpoint::ip(IpAddr::V4(plan::server_ip()))],
            ..Service::new("bench")
        }],
        ..RegistryFile::default()
    }
}

impl Pods {
    /// Starts the table's `i`th mesh in the pods in front of the server
    /// pod's `target` and waits until both proxies are ready. Its rules are
    /// installed before each of its runs ([`Pods::route`]).
    pub fn mesh(&self, bins: &Bins, spec: &MeshSpec<'_>, i: usize, target: SocketAddr) -> anyhow::Result<Mesh> {
        if spec.trace_collector.is_some() {
            bail!("the pods topology measures no tracing");
        }
        let names = self.names();
        let ports = ProxyPorts::of_mesh(i);
        let shift = u16::try_from(i).unwrap_or(0) * 100;
        let name = &spec.name;
        let dir = &self.dir;
        let grpc = SocketAddr::from((plan::node_ip(), plan::CONTROL_PORT + shift));
        let control_admin = SocketAddr::from(([127, 0, 0, 1], 9990 + shift));

        let registry_path = dir.join(format!("registry-{name}.yaml"));
        std::fs::write(&registry_path, mesh_spec::to_yaml(&registry(spec.protocol, target.port())))
            .with_context(|| format!("cannot write {}", registry_path.display()))?;
        let listen = SocketAddr::from(([0, 0, 0, 0], grpc.port()));
        let identity_dir = spec.identity.map(|id| id.dir.as_path());
        let mut control_argv = vec![bins.control.display().to_string()];
        control_argv.extend(mesh::control_args(&registry_path, listen, control_admin, identity_dir));
        let control = spawn_in(&names.node, &format!("mesh-control-{name}"), &[], &control_argv, dir)?;
        let admin = Admin::InNetns(names.node.clone(), control_admin);
        wait("the control plane's /ready", &control, STARTUP, || admin.ready())?;

        let proxy = |role: &str, ns: &str, workload: &str, token: Option<&std::path::Path>| -> anyhow::Result<_> {
            let own = dir.join(format!("{role}-{name}"));
            let identity = match (spec.identity, token) {
                (Some(id), Some(token)) => {
                    let token = give_proxy(token, &own, "token", 0o600)?;
                    let anchors = give_proxy(&id.anchors, &own, "trust-anchors.pem", 0o644)?;
                    Some((token, anchors))
                }
                _ => None,
            };
            let admin_addr = SocketAddr::from(([0, 0, 0, 0], ports.admin));
            let identity_ref = identity.as_ref().map(|(t, a)| ProxyIdentity { token: t, anchors: a });
            let mut argv = vec![self.proxy_bin.display().to_string()];
            argv.extend(mesh::proxy_args(workload, grpc, admin_addr, spec.threads, identity_ref));
            argv.extend(plan::transparent_args(ports));
            argv.extend(args(&[&"--shutdown-grace", &"1s"]));
            argv.extend(spec.extra_args.iter().cloned());
            let child = spawn_in(ns, &format!("{role}-proxy-{name}"), &plan::as_proxy_user(), &argv, dir)?;
            let admin = Admin::InNetns(ns.to_string(), SocketAddr::from(([127, 0, 0, 1], ports.admin)));
            Ok((child, admin))
        };
        let server_token = spec.identity.map(|i| i.server_token.as_path());
        let (server, server_admin) = proxy("server", &names.server, "bench", server_token)?;
        let client_token = spec.identity.map(|i| i.client_token.as_path());
        let (client, client_admin) = proxy("client", &names.client, "bench-client", client_token)?;
        wait("the server pod's proxy's /ready", &server, STARTUP, || server_admin.ready())?;
        wait("the client pod's proxy's /ready", &client, STARTUP, || client_admin.ready())?;
        Ok(Mesh::from_parts([control, server, client], target, [client_admin, server_admin]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a registry that describes the server at another address
    /// than its pod IP (the client proxy could not resolve the load's
    /// destination), or without the identity the client proxy expects.
    #[test]
    fn the_registry_has_the_server_pod_at_its_ip() {
        let yaml = mesh_spec::to_yaml(&registry("http", 8080));
        assert!(yaml.contains("endpoints:\n  - ip: \"10.79.0.11\"\n"), "{yaml}");
        assert!(
            yaml.contains("- port: 8080\n    protocol: http\n") && yaml.contains("serviceAccount: bench"),
            "{yaml}"
        );
    }
}
