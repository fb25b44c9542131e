//! The control plane: the lab's service registry and `mesh-control` in its
//! own namespace on the bridge.

use super::procs::{ProcId, eventually};
use super::{CONTROL_ADMIN_PORT, CONTROL_PORT, Lab};
use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A service in the lab's registry.
#[derive(Debug, Clone)]
pub struct Service {
    /// Name (namespace `default`).
    pub name: String,
    /// Service account of its replicas (default: the name).
    pub service_account: Option<String>,
    /// Virtual IP (IPv4 or IPv6).
    pub vip: IpAddr,
    /// Service port.
    pub port: u16,
    /// Port the replicas' apps listen on.
    pub target_port: u16,
    /// `http`, `http2`, `grpc`, `opaque`...
    pub protocol: String,
    /// The replicas' pod IPs (either family).
    pub endpoints: Vec<IpAddr>,
}

impl Service {
    /// A service with no endpoints yet.
    pub fn new(name: &str, vip: impl Into<IpAddr>, port: u16, target_port: u16, protocol: &str) -> Self {
        Self {
            name: name.into(),
            service_account: None,
            vip: vip.into(),
            port,
            target_port,
            protocol: protocol.into(),
            endpoints: Vec::new(),
        }
    }

    /// With these endpoints.
    pub fn endpoints<A: Into<IpAddr> + Copy>(mut self, ips: &[A]) -> Self {
        self.endpoints = ips.iter().map(|&ip| ip.into()).collect();
        self
    }

    /// Running as this service account.
    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = Some(sa.into());
        self
    }

    /// The address apps dial: `vip:port` (`[vip]:port` for IPv6).
    pub fn addr(&self) -> String {
        std::net::SocketAddr::new(self.vip, self.port).to_string()
    }
}

/// The registry file of these services.
pub fn registry(services: &[Service]) -> mesh_spec::RegistryFile {
    let services = services
        .iter()
        .map(|s| mesh_spec::Service {
            service_account: s.service_account.clone(),
            addresses: vec![s.vip],
            ports: vec![mesh_spec::Port {
                target_port: Some(s.target_port),
                protocol: Some(s.protocol.clone()),
                ..mesh_spec::Port::new(s.port)
            }],
            endpoints: s.endpoints.iter().map(|&ip| mesh_spec::Endpoint::ip(ip)).collect(),
            ..mesh_spec::Service::new(&s.name)
        })
        .collect();
    mesh_spec::RegistryFile { services, ..Default::default() }
}

/// Renders a registry file.
pub fn registry_yaml(services: &[Service]) -> String {
    mesh_spec::to_yaml(&registry(services))
}

impl Lab {
    /// The services the registry holds.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Replaces the registry (written atomically; the control plane polls it every 50 ms).
    pub fn set_services(&mut self, services: Vec<Service>) {
        self.services = services;
        self.write_registry();
    }

    /// Changes one service and rewrites the registry.
    pub fn update_service(&mut self, name: &str, f: impl FnOnce(&mut Service)) {
        let s = self.services.iter_mut().find(|s| s.name == name).unwrap_or_else(|| panic!("no service {name}"));
        f(s);
        self.write_registry();
    }

    fn registry_path(&self) -> PathBuf {
        self.dir.path().join("registry.yaml")
    }

    fn write_registry(&self) {
        let tmp = self.dir.path().join(".registry.yaml.tmp");
        fs::write(&tmp, registry_yaml(&self.services)).unwrap();
        fs::rename(&tmp, self.registry_path()).unwrap();
    }

    /// Starts the control plane in its own namespace on the bridge (the
    /// registry as set so far, the lab's CA) and waits until it is ready.
    pub fn start_control(&mut self) {
        assert!(self.control.is_none(), "the control plane is already started");
        if !self.registry_path().exists() {
            self.write_registry();
        }
        let ip = self.add_pod("control");
        self.control_ip = Some(ip);
        let argv = vec![
            crate::bins::path("mesh-control").display().to_string(),
            "--registry-file".into(),
            self.registry_path().display().to_string(),
            "--registry-poll".into(),
            "50ms".into(),
            "--identity-dir".into(),
            self.identity.path().display().to_string(),
            "--grpc-addr".into(),
            format!("0.0.0.0:{CONTROL_PORT}"),
            "--admin-addr".into(),
            format!("0.0.0.0:{CONTROL_ADMIN_PORT}"),
        ];
        let id = self.spawn("control", "mesh-control", &argv.iter().map(String::as_str).collect::<Vec<_>>());
        self.control = Some(id);
        self.wait_control_ready();
    }

    fn wait_control_ready(&mut self) {
        let id = self.control.unwrap();
        let url = format!("http://127.0.0.1:{CONTROL_ADMIN_PORT}/ready");
        let ok = eventually(Duration::from_secs(15), || {
            assert!(self.exited(id).is_none(), "the control plane exited:\n{}", self.logs(id));
            self.curl("control", &["-f", &url]).stdout.starts_with("ready")
        });
        assert!(ok, "the control plane never became ready:\n{}", self.logs(id));
    }

    /// The control plane's process.
    pub fn control(&self) -> ProcId {
        self.control.expect("no control plane")
    }

    /// Restarts a (killed) control plane on the same address and waits until ready.
    pub fn restart_control(&mut self) {
        let id = self.control();
        self.restart(id);
        self.wait_control_ready();
    }
}
