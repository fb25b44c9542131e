//! The soak's mesh, started with the pieces `cargo xtask bench` uses
//! ([`crate::mesh`]): a control plane with a short certificate lifetime,
//! replicas (an HTTP app and its server proxy each), and a client proxy
//! whose outbound listener takes the load. It can rewrite the registry
//! file (endpoint churn) and kill and restart the control plane on the
//! same addresses.

use crate::mesh::{self, Bins, IdentityDir, ProxyIdentity, STARTUP, args, loopback, ready, resolved};
use crate::procs::{free_ports, http_get, spawn, wait_for};
use anyhow::Context;
use mesh_process::Child;
use mesh_spec::{Endpoint, Port, RegistryFile, Service};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The trust domain of the soak's identity directory.
const TRUST_DOMAIN: &str = "soak.mesh";
/// The service (and its replicas' service account) the load goes to.
const SERVICE: &str = "soak";
/// The client proxy's service account.
const CLIENT_ACCOUNT: &str = "soak-client";

/// How the soak's mesh is set up.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Replicas of the service.
    pub replicas: usize,
    /// `mesh-control --cert-ttl`.
    pub cert_ttl: Duration,
    /// `mesh-proxy --renew-at`.
    pub renew_at: f64,
}

/// An app and the server proxy in front of it.
#[derive(Debug)]
struct Replica {
    app: Child,
    proxy: Child,
    inbound: SocketAddr,
    admin: SocketAddr,
}

/// A running soak mesh.
#[derive(Debug)]
pub struct SoakMesh {
    control: Child,
    control_admin: SocketAddr,
    client: Child,
    client_admin: SocketAddr,
    replicas: Vec<Replica>,
    registry: PathBuf,
    /// The client proxy's outbound listener for the service.
    pub entry: SocketAddr,
}

impl SoakMesh {
    /// Starts everything in `dir` (logs, identity, registry) and waits until
    /// the client proxy has resolved the service to every replica.
    pub fn start(bins: &Bins, setup: Setup, dir: &Path) -> anyhow::Result<Self> {
        let identity = IdentityDir::init(&bins.meshctl, dir, TRUST_DOMAIN)?;
        let p = free_ports(4 + 3 * setup.replicas)?;
        let (grpc, control_admin, entry, client_admin) =
            (loopback(p[0]), loopback(p[1]), loopback(p[2]), loopback(p[3]));

        let mut replicas = Vec::new();
        for i in 0..setup.replicas {
            let (app_addr, inbound, admin) = (loopback(p[4 + 3 * i]), loopback(p[5 + 3 * i]), loopback(p[6 + 3 * i]));
            let name = format!("replica-{}", i + 1);
            let app_args = args(&[&"http-server", &"--listen", &app_addr, &"--name", &name]);
            let app = spawn(&format!("app-{}", i + 1), &bins.test_app, &app_args, &[], dir)?;
            wait_for(&format!("app {name}"), STARTUP, &[&app], || {
                match http_get(app_addr, "/", mesh::ADMIN_TIMEOUT) {
                    Ok((200, _)) => None,
                    Ok((status, _)) => Some(format!("GET / answered {status}")),
                    Err(e) => Some(e.to_string()),
                }
            })?;
            let token = identity.token(SERVICE, &dir.join(format!("server-{}.token", i + 1)))?;
            let id = ProxyIdentity { token: &token, anchors: &identity.anchors };
            let mut a = mesh::proxy_args(SERVICE, grpc, admin, 1, Some(id));
            a.extend(args(&[&"--app", &app_addr, &"--inbound-addr", &inbound, &"--renew-at", &setup.renew_at]));
            // Started before the control plane; each waits for it.
            let proxy = spawn(&format!("server-proxy-{}", i + 1), &bins.proxy, &a, &[], dir)?;
            replicas.push(Replica { app, proxy, inbound, admin });
        }

        let registry = dir.join("registry.yaml");
        let all: Vec<usize> = (0..setup.replicas).collect();
        write_registry(&registry, &replicas, &all)?;
        let mut control_args = mesh::control_args(&registry, grpc, control_admin, Some(&identity.dir));
        control_args.extend(args(&[&"--cert-ttl", &format_args!("{}s", setup.cert_ttl.as_secs())]));
        let control = mesh::start_control(bins, "mesh-control", &control_args, control_admin, dir)?;

        let token = identity.token(CLIENT_ACCOUNT, &dir.join("client.token"))?;
        let id = ProxyIdentity { token: &token, anchors: &identity.anchors };
        let mut a = mesh::proxy_args("soak-client", grpc, client_admin, 1, Some(id));
        a.extend(args(&[&"--upstream", &format_args!("{entry}={SERVICE}.default:80"), &"--renew-at", &setup.renew_at]));
        let client = spawn("client-proxy", &bins.proxy, &a, &[], dir)?;

        let mesh = Self { control, control_admin, client, client_admin, replicas, registry, entry };
        let procs = mesh.children();
        for r in &mesh.replicas {
            wait_for(&format!("{} /ready", r.proxy.name()), STARTUP, &procs, || ready(r.admin))?;
        }
        wait_for("the client proxy's /ready", STARTUP, &procs, || ready(client_admin))?;
        wait_for("the client proxy to resolve the service", STARTUP, &procs, || resolved(client_admin))?;
        let n = setup.replicas;
        wait_for(&format!("the client proxy to see {n} endpoints"), STARTUP, &procs, || mesh.endpoints_seen(n))?;
        Ok(mesh)
    }

    /// Every process the soak watches, in [`Self::names`] order, then the apps.
    fn children(&self) -> Vec<&Child> {
        let mut v = vec![&self.control, &self.client];
        v.extend(self.replicas.iter().map(|r| &r.proxy));
        v.extend(self.replicas.iter().map(|r| &r.app));
        v
    }

    /// Short names of the measured processes: the control plane, the client
    /// proxy, then each server proxy.
    pub fn names(&self) -> Vec<String> {
        let mut v = vec!["control".to_string(), "client".to_string()];
        v.extend((1..=self.replicas.len()).map(|i| format!("server-{i}")));
        v
    }

    /// Process ids of the measured processes, in [`Self::names`] order (the
    /// control plane's changes when it restarts).
    pub fn pids(&self) -> Vec<u32> {
        self.children().iter().take(2 + self.replicas.len()).map(|c| c.pid()).collect()
    }

    /// Admin addresses of the proxies: the client's first.
    pub fn proxy_admins(&self) -> Vec<SocketAddr> {
        std::iter::once(self.client_admin).chain(self.replicas.iter().map(|r| r.admin)).collect()
    }

    /// The number of replicas.
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// Lists the replicas `live` (indexes) in the registry file.
    pub fn set_live(&self, live: &[usize]) -> anyhow::Result<()> {
        write_registry(&self.registry, &self.replicas, live)
    }

    /// `None` once the client proxy's target has exactly `n` endpoints.
    pub fn endpoints_seen(&self, n: usize) -> Option<String> {
        match mesh::first_target(self.client_admin) {
            Ok((_, seen)) if seen == n => None,
            Ok((status, seen)) => {
                Some(format!("the client proxy's target is {status} with {seen} endpoint(s), not {n}"))
            }
            Err(e) => Some(format!("{e:#}")),
        }
    }

    /// SIGKILLs the control plane and starts it again with the same command
    /// line (same addresses, its log appended); returns how long it was
    /// down, until its `/ready`.
    pub fn restart_control(&mut self) -> anyhow::Result<Duration> {
        let spec = self.control.spec().clone().append(true);
        let down = Instant::now();
        self.control.kill();
        self.control = Child::spawn(spec).context("cannot restart mesh-control")?;
        let admin = self.control_admin;
        wait_for("the restarted mesh-control's /ready", STARTUP, &[&self.control], || ready(admin))?;
        Ok(down.elapsed())
    }

    /// Fails, naming it with its status and the end of its log, if any
    /// process has exited.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        for c in self.children() {
            c.check()?;
        }
        Ok(())
    }

    /// Where the processes' logs are.
    pub fn log_dir(&self) -> Option<&Path> {
        self.control.log_path().parent()
    }
}

/// Writes the registry with the replicas `live`, atomically (a temporary
/// file renamed over it) so the control plane never reads half a file.
fn write_registry(path: &Path, replicas: &[Replica], live: &[usize]) -> anyhow::Result<()> {
    let file = RegistryFile {
        services: vec![Service {
            service_account: Some(SERVICE.into()),
            ports: vec![Port { protocol: Some("http".into()), ..Port::new(80) }],
            endpoints: live.iter().filter_map(|&i| replicas.get(i)).map(|r| Endpoint::address(r.inbound)).collect(),
            ..Service::new(SERVICE)
        }],
        ..RegistryFile::default()
    };
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, mesh_spec::to_yaml(&file)).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}
