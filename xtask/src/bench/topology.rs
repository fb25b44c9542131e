//! What is measured: nginx as the backend, and meshes in front of it
//! (control plane, a server-side proxy beside nginx, a client-side proxy),
//! plaintext or with identity and mTLS as users run it, with or without
//! tracing.

use super::loadgen::Proto;
use super::procs::{command, free_ports, http_get, output_with_timeout, spawn, wait_for};
use anyhow::{Context, bail};
use mesh_process::Child;
use mesh_spec::{Endpoint, Port, RegistryFile, Service};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a process may take to become ready.
const STARTUP: Duration = Duration::from_secs(20);
/// Timeout of one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

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
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        let text = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  default_type text/plain;\n  keepalive_requests 100000000;\n\
             \x20 keepalive_timeout 300s;\n  client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n\
             \x20 fastcgi_temp_path {d}/tmp-fastcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n\
             \x20 server {{\n    listen {http1};\n    listen {http2} http2;\n    location / {{ return 200 \"ok\"; }}\n  }}\n}}\n"
        );
        std::fs::write(&conf, text).with_context(|| format!("cannot write {}", conf.display()))?;
        let args = |test: bool| {
            let mut a: Vec<String> = Vec::new();
            if test {
                a.push("-t".into());
            }
            let err_log = format!("{d}/nginx-error.log");
            a.extend(["-p".into(), format!("{d}/"), "-e".into(), err_log, "-c".into(), conf.display().to_string()]);
            a
        };
        let check = std::process::Command::new(nginx).args(args(true)).output().context("cannot run nginx -t")?;
        if !check.status.success() {
            bail!(
                "nginx rejected the generated config {}:\n{}",
                conf.display(),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let proc = spawn("nginx", nginx, &args(false), &[], dir)?;
        wait_for("nginx", STARTUP, &[&proc], || match http_get(http1, "/", ADMIN_TIMEOUT) {
            Ok((200, body)) if body == "ok" => None,
            Ok((status, body)) => Some(format!("GET / answered {status} {body:?}")),
            Err(e) => Some(e.to_string()),
        })?;
        Ok(Self { proc, http1, http2 })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The listener for `proto`.
    pub fn addr(&self, proto: Proto) -> SocketAddr {
        match proto {
            Proto::Http1 => self.http1,
            Proto::Http2 => self.http2,
        }
    }
}

/// The release binaries the bench runs.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `mesh-proxy`.
    pub proxy: PathBuf,
    /// `mesh-control`.
    pub control: PathBuf,
    /// `meshctl`: the identity directory and join tokens.
    pub meshctl: PathBuf,
    /// `mesh-test-app`: the OTLP sink of the tracing scenario.
    pub test_app: PathBuf,
}

/// The trust domain of the bench's identity directory.
pub const TRUST_DOMAIN: &str = "bench.mesh";
/// The server proxy's service account: the registry service's name, whose
/// identity the client proxy expects of its endpoints.
pub const SERVER_ACCOUNT: &str = "bench";
/// The client proxy's service account.
pub const CLIENT_ACCOUNT: &str = "client";
/// Lifetime of the join tokens, as `meshctl identity token --ttl`: each gets
/// its proxy the first certificate only (once; renewals use the certificate),
/// so it need only outlast the bench's start-up, which this covers with room.
const TOKEN_TTL: &str = "24h";
/// The trust bundle's file in an identity directory (`mesh_identity::dir::ANCHORS`).
const ANCHORS: &str = "trust-anchors.pem";
/// How long one `meshctl identity` command may take.
const MESHCTL_TIMEOUT: Duration = Duration::from_secs(60);

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
        let path = dir.join("identity");
        let d = path.display().to_string();
        run_meshctl(meshctl, &["identity", "init", "--dir", &d, "--trust-domain", TRUST_DOMAIN])?;
        let anchors = path.join(ANCHORS);
        if !anchors.is_file() {
            bail!("`meshctl identity init` wrote no {}", anchors.display());
        }
        let token = |account: &str| -> anyhow::Result<PathBuf> {
            let file = dir.join(format!("{account}.token"));
            let f = file.display().to_string();
            run_meshctl(
                meshctl,
                &[
                    "identity",
                    "token",
                    "--dir",
                    &d,
                    "--namespace",
                    "default",
                    "--service-account",
                    account,
                    "--ttl",
                    TOKEN_TTL,
                    "--output",
                    &f,
                ],
            )?;
            Ok(file)
        };
        Ok(Self { anchors, server_token: token(SERVER_ACCOUNT)?, client_token: token(CLIENT_ACCOUNT)?, dir: path })
    }
}

/// Runs `meshctl ARGS...` to completion; fails with its output unless it exits 0.
fn run_meshctl(meshctl: &Path, args: &[&str]) -> anyhow::Result<()> {
    let line = format!("meshctl {}", args.join(" "));
    let out = output_with_timeout(command(meshctl).args(args), MESHCTL_TIMEOUT)
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
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
}

/// A control plane and two proxies: load → client proxy → server proxy → app.
#[derive(Debug)]
pub struct Mesh {
    /// The client-side proxy (outbound), where load is sent.
    pub client: Child,
    /// The server-side proxy (inbound), beside the app.
    pub server: Child,
    control: Child,
    /// The client proxy's upstream listener, mapped to service `bench`.
    pub entry: SocketAddr,
    client_admin: SocketAddr,
    server_admin: SocketAddr,
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

        let mut control_args =
            args(&[&"--registry-file", &registry.display(), &"--grpc-addr", &grpc, &"--admin-addr", &control_admin]);
        if let Some(id) = spec.identity {
            control_args.extend(args(&[&"--identity-dir", &id.dir.display()]));
        }
        let control = spawn(&format!("mesh-control-{name}"), &bins.control, &control_args, &[], dir)?;
        wait_for("mesh-control /ready", STARTUP, &[&control], || ready(control_admin))?;

        let cp = format!("http://{grpc}");
        let proxy_args = |workload: &str, admin: SocketAddr, token: Option<&Path>| {
            let mut a = args(&[
                &"--workload",
                &workload,
                &"--control-plane",
                &cp,
                &"--admin-addr",
                &admin,
                &"--threads",
                &spec.threads,
            ]);
            if let (Some(id), Some(token)) = (spec.identity, token) {
                a.extend(args(&[
                    &"--identity-token-file",
                    &token.display(),
                    &"--trust-anchors",
                    &id.anchors.display(),
                ]));
            }
            if let Some(collector) = &spec.trace_collector {
                a.extend(args(&[&"--trace-collector", collector, &"--trace-sample-ratio", &"1.0"]));
            }
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
        Ok(Self { client, server, control, entry, client_admin, server_admin })
    }

    /// The proxies, client first, for CPU and memory readings.
    pub fn proxies(&self) -> [&Child; 2] {
        [&self.client, &self.server]
    }

    /// Both proxies' `/metrics`, client first.
    pub fn metrics(&self) -> anyhow::Result<[String; 2]> {
        let get = |admin: SocketAddr| match http_get(admin, "/metrics", ADMIN_TIMEOUT) {
            Ok((200, body)) => Ok(body),
            Ok((status, _)) => bail!("GET {admin}/metrics answered {status}"),
            Err(e) => Err(e.context(format!("GET {admin}/metrics"))),
        };
        Ok([get(self.client_admin)?, get(self.server_admin)?])
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

/// Command-line arguments from anything printable.
fn args(list: &[&dyn std::fmt::Display]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// `None` once `GET /ready` answers 200; otherwise why not.
fn ready(admin: SocketAddr) -> Option<String> {
    match http_get(admin, "/ready", ADMIN_TIMEOUT) {
        Ok((200, _)) => None,
        Ok((status, body)) => Some(format!("/ready answered {status} {}", body.trim())),
        Err(e) => Some(format!("/ready: {e}")),
    }
}

/// `None` once the proxy's `/config` shows its first target resolved to at
/// least one endpoint; otherwise what it shows.
fn resolved(admin: SocketAddr) -> Option<String> {
    let body = match http_get(admin, "/config", ADMIN_TIMEOUT) {
        Ok((200, body)) => body,
        Ok((status, _)) => return Some(format!("/config answered {status}")),
        Err(e) => return Some(format!("/config: {e}")),
    };
    let config: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return Some(format!("/config is not JSON: {e}")),
    };
    let target = config.pointer("/targets/0");
    let status = target.and_then(|t| t.get("status")).and_then(|s| s.as_str()).unwrap_or("absent");
    let endpoints = target.and_then(|t| t.get("endpoints")).and_then(|e| e.as_array()).map_or(0, Vec::len);
    if status == "resolved" && endpoints > 0 {
        None
    } else {
        Some(format!("targets[0].status is {status:?} with {endpoints} endpoint(s)"))
    }
}
