//! What is measured: nginx as the backend, and meshes in front of it
//! (control plane, a server-side proxy beside nginx, a client-side proxy),
//! plaintext or with identity and mTLS as users run it, with or without
//! tracing.

use super::loadgen::Proto;
use crate::mesh::{self, ADMIN_TIMEOUT, IdentityDir, ProxyIdentity, STARTUP, args, loopback, ready, resolved};
use crate::procs::{free_ports, http_get, spawn, wait_for};
use anyhow::{Context, bail};
use mesh_process::Child;
use mesh_spec::{Endpoint, Port, RegistryFile, Service};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use crate::mesh::Bins;

/// nginx answering `200 ok` on an HTTP/1.1 port and an h2c (prior knowledge) port.
#[derive(Debug)]
pub struct Nginx {
    proc: Child,
    /// The HTTP/1.1 listener.
    pub http1: SocketAddr,
    /// The HTTP/2 cleartext listener.
    pub http2: SocketAddr,
}

impl Nginx {
    /// Writes a config into `dir`, checks it with `nginx -t` and starts
    /// nginx in the foreground as a single process.
    pub fn start(nginx: &Path, dir: &Path) -> anyhow::Result<Self> {
        let ports = free_ports(2)?;
        let (http1, http2) = (loopback(ports[0]), loopback(ports[1]));
        let servers = format!(
            "  server {{\n    listen {http1};\n    listen {http2} http2;\n    location / {{ return 200 \"ok\"; }}\n  }}\n"
        );
        let proc = launch(nginx, dir, "nginx", &config(dir, "nginx", &servers), http1)?;
        Ok(Self { proc, http1, http2 })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The listener for `proto` (gRPC's backend is the test app, not
    /// nginx: [`super::grpc::GrpcApp`]; nginx's h2c listener stands in).
    pub fn addr(&self, proto: Proto) -> SocketAddr {
        match proto {
            Proto::Http1 => self.http1,
            Proto::Http2 | Proto::Grpc | Proto::GrpcStream => self.http2,
        }
    }
}

/// A full nginx config for `name`: one process, in the foreground, its
/// files under `dir`, with `servers` (server blocks and upstreams) inside
/// the `http` block.
pub fn config(dir: &Path, name: &str, servers: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/{name}.pid;\n\
         error_log {d}/{name}-error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  default_type text/plain;\n  keepalive_requests 100000000;\n\
         \x20 keepalive_timeout 300s;\n  client_body_temp_path {d}/{name}-tmp-body;\n  proxy_temp_path {d}/{name}-tmp-proxy;\n\
         \x20 fastcgi_temp_path {d}/{name}-tmp-fastcgi;\n  uwsgi_temp_path {d}/{name}-tmp-uwsgi;\n  scgi_temp_path {d}/{name}-tmp-scgi;\n\
         {servers}}}\n"
    )
}

/// Writes `text` to `<dir>/<name>.conf`, checks it with `nginx -t` and
/// starts nginx with it, waiting until `GET /` on `probe` answers 200 `ok`.
pub fn launch(nginx: &Path, dir: &Path, name: &str, text: &str, probe: SocketAddr) -> anyhow::Result<Child> {
    let d = dir.display();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, text).with_context(|| format!("cannot write {}", conf.display()))?;
    let args = |test: bool| {
        let mut a: Vec<String> = Vec::new();
        if test {
            a.push("-t".into());
        }
        let err_log = format!("{d}/{name}-error.log");
        a.extend(["-p".into(), format!("{d}/"), "-e".into(), err_log, "-c".into(), conf.display().to_string()]);
        a
    };
    let check = std::process::Command::new(nginx).args(args(true)).output().context("cannot run nginx -t")?;
    if !check.status.success() {
        bail!("nginx rejected the generated config {}:\n{}", conf.display(), String::from_utf8_lossy(&check.stderr));
    }
    let proc = spawn(name, nginx, &args(false), &[], dir)?;
    wait_for(name, STARTUP, &[&proc], || ok_at(probe))?;
    Ok(proc)
}

/// `None` once `GET /` at `addr` answers 200 `ok` (the backend's answer).
pub fn ok_at(addr: SocketAddr) -> Option<String> {
    match http_get(addr, "/", ADMIN_TIMEOUT) {
        Ok((200, body)) if body == "ok" => None,
        Ok((status, body)) => Some(format!("GET / answered {status} {body:?}")),
        Err(e) => Some(e.to_string()),
    }
}

/// The trust domain of the bench's identity directory.
pub const TRUST_DOMAIN: &str = "bench.mesh";
/// The server proxy's service account: the registry service's name, whose
/// identity the client proxy expects of its endpoints.
pub const SERVER_ACCOUNT: &str = "bench";
/// The client proxy's service account.
pub const CLIENT_ACCOUNT: &str = "client";
/// Identity as users set it up: an identity directory for the control plane
/// (its CA) and a join token per proxy, in files.
#[derive(Debug)]
pub struct Identity {
    /// The identity directory (`mesh-control --identity-dir`).
    pub dir: PathBuf,
    /// Its trust bundle (`mesh-proxy --trust-anchors`).
    pub anchors: PathBuf,
    /// The server proxy's join token file.
    pub server_token: PathBuf,
    /// The client proxy's join token file.
    pub client_token: PathBuf,
}

impl Identity {
    /// Creates `<dir>/identity` with `meshctl identity init` and mints both
    /// proxies' tokens into files with `meshctl identity token`, as a user
    /// would.
    pub fn create(meshctl: &Path, dir: &Path) -> anyhow::Result<Self> {
        let id = IdentityDir::init(meshctl, dir, TRUST_DOMAIN)?;
        let token = |account: &str| id.token(account, &dir.join(format!("{account}.token")));
        Ok(Self {
            server_token: token(SERVER_ACCOUNT)?,
            client_token: token(CLIENT_ACCOUNT)?,
            dir: id.dir,
            anchors: id.anchors,
        })
    }
}

/// What a mesh under test is made of.
#[derive(Debug, Clone)]
pub struct MeshSpec<'a> {
    /// A name for its processes' logs, e.g. `http1-mtls`.
    pub name: String,
    /// The app the server proxy fronts.
    pub app: SocketAddr,
    /// The registry's protocol for the service: `http`, `http2` or `opaque`.
    pub protocol: &'static str,
    /// With identity: mTLS between the proxies; without: plaintext.
    pub identity: Option<&'a Identity>,
    /// OTLP collector both proxies export spans to, sampling every trace.
    pub trace_collector: Option<String>,
    /// Worker threads of each proxy.
    pub threads: usize,
    /// Extra arguments for both proxies.
    pub extra_args: &'a [String],
}

/// A control plane and two proxies: load → client proxy → server proxy → app.
#[derive(Debug)]
pub struct Mesh {
    /// The client-side proxy (outbound), where load is sent.
    pub client: Child,
    /// The server-side proxy (inbound), beside the app.
    pub server: Child,
    control: Child,
    /// Where load goes: the client proxy's upstream listener, mapped to
    /// service `bench` (loopback), or the server pod's address (pods).
    pub entry: SocketAddr,
    client_admin: Admin,
    server_admin: Admin,
}

/// Where a proxy's admin server is reached: from here, or (pods) from
/// inside its network namespace.
#[derive(Debug, Clone)]
pub enum Admin {
    /// On loopback.
    Here(SocketAddr),
    /// Inside namespace `.0`.
    InNetns(String, SocketAddr),
}

impl Admin {
    /// `GET path`: status and body.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        match self {
            Admin::Here(addr) => http_get(*addr, path, ADMIN_TIMEOUT),
            Admin::InNetns(ns, addr) => super::pods::http_get_in(ns, *addr, path),
        }
    }

    /// `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<String> {
        match self {
            Admin::Here(addr) => mesh::metrics(*addr),
            Admin::InNetns(ns, _) => match self.get("/metrics") {
                Ok((200, body)) => Ok(body),
                Ok((status, _)) => bail!("GET /metrics in {ns} answered {status}"),
                Err(e) => Err(e.context(format!("GET /metrics in {ns}"))),
            },
        }
    }

    /// `None` once `/ready` answers 200.
    pub fn ready(&self) -> Option<String> {
        match self.get("/ready") {
            Ok((200, _)) => None,
            Ok((status, body)) => Some(format!("/ready answered {status} {}", body.trim())),
            Err(e) => Some(format!("/ready: {e:#}")),
        }
    }
}

impl Mesh {
    /// Starts the mesh in front of `spec.app` and waits until both proxies
    /// are ready (with identity: hold a certificate) and the client proxy
    /// has resolved service `bench` to the server proxy.
    pub fn start(bins: &Bins, spec: &MeshSpec<'_>, dir: &Path) -> anyhow::Result<Self> {
        let p = free_ports(6)?;
        let (grpc, control_admin, inbound, server_admin, entry, client_admin) =
            (loopback(p[0]), loopback(p[1]), loopback(p[2]), loopback(p[3]), loopback(p[4]), loopback(p[5]));
        let name = &spec.name;
        let registry = dir.join(format!("registry-{name}.yaml"));
        let file = RegistryFile {
            services: vec![Service {
                service_account: Some(SERVER_ACCOUNT.into()),
                ports: vec![Port { protocol: Some(spec.protocol.into()), ..Port::new(80) }],
                endpoints: vec![Endpoint::address(inbound)],
                ..Service::new("bench")
            }],
            ..RegistryFile::default()
        };
        std::fs::write(&registry, mesh_spec::to_yaml(&file))
            .with_context(|| format!("cannot write {}", registry.display()))?;

        let identity_dir = spec.identity.map(|id| id.dir.as_path());
        let control_args = mesh::control_args(&registry, grpc, control_admin, identity_dir);
        let control = mesh::start_control(bins, &format!("mesh-control-{name}"), &control_args, control_admin, dir)?;

        let proxy_args = |workload: &str, admin: SocketAddr, token: Option<&Path>| {
            let identity = match (spec.identity, token) {
                (Some(id), Some(token)) => Some(ProxyIdentity { token, anchors: &id.anchors }),
                _ => None,
            };
            let mut a = mesh::proxy_args(workload, grpc, admin, spec.threads, identity);
            if let Some(collector) = &spec.trace_collector {
                a.extend(args(&[&"--trace-collector", collector, &"--trace-sample-ratio", &"1.0"]));
            }
            a.extend(spec.extra_args.iter().cloned());
            a
        };
        let mut server_args = proxy_args("bench", server_admin, spec.identity.map(|i| i.server_token.as_path()));
        server_args.extend(args(&[&"--app", &spec.app, &"--inbound-addr", &inbound]));
        if spec.protocol == "opaque" {
            // Without identity, inbound would otherwise sniff the client's
            // bytes and serve them as HTTP; with it, the ALPN says opaque.
            server_args.extend(args(&[&"--opaque-ports", &spec.app.port()]));
        }
        let server = spawn(&format!("server-proxy-{name}"), &bins.proxy, &server_args, &[], dir)?;
        let mut client_args = proxy_args("bench-client", client_admin, spec.identity.map(|i| i.client_token.as_path()));
        client_args.extend(args(&[&"--upstream", &format_args!("{entry}=bench.default:80")]));
        let client = spawn(&format!("client-proxy-{name}"), &bins.proxy, &client_args, &[], dir)?;

        let all = [&control, &server, &client];
        wait_for("the server proxy's /ready", STARTUP, &all, || ready(server_admin))?;
        wait_for("the client proxy's /ready", STARTUP, &all, || ready(client_admin))?;
        wait_for("the client proxy to resolve bench.default:80", STARTUP, &all, || resolved(client_admin))?;
        let (client_admin, server_admin) = (Admin::Here(client_admin), Admin::Here(server_admin));
        Ok(Self { client, server, control, entry, client_admin, server_admin })
    }

    /// A mesh of processes started elsewhere (the pods topology).
    pub fn from_parts(procs: [Child; 3], entry: SocketAddr, admins: [Admin; 2]) -> Self {
        let [control, server, client] = procs;
        let [client_admin, server_admin] = admins;
        Self { client, server, control, entry, client_admin, server_admin }
    }

    /// The proxies, client first, for CPU and memory readings.
    pub fn proxies(&self) -> [&Child; 2] {
        [&self.client, &self.server]
    }

    /// Both proxies' `/metrics`, client first.
    pub fn metrics(&self) -> anyhow::Result<[String; 2]> {
        Ok([self.client_admin.metrics()?, self.server_admin.metrics()?])
    }

    /// Fails, naming it with its status and the end of its log, if any
    /// process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.control.check()?;
        self.server.check()?;
        Ok(self.client.check()?)
    }

    /// The end of each process's log, for diagnosing a failed run.
    pub fn log_tails(&self) -> String {
        [&self.control, &self.server, &self.client]
            .iter()
            .map(|p| format!("--- {} log (end) ---\n{}", p.name(), p.log_tail(15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
