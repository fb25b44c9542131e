//! What is measured: nginx as the backend, and a mesh in front of it
//! (control plane, a server-side proxy beside nginx, a client-side proxy).

use super::loadgen::Proto;
use super::procs::{Proc, free_ports, http_get, wait_for};
use anyhow::{Context, bail};
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
    proc: Proc,
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
        let mut proc = Proc::spawn("nginx", nginx, &args(false), &[], dir)?;
        wait_for("nginx", STARTUP, &mut [&mut proc], || match http_get(http1, "/", ADMIN_TIMEOUT) {
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

/// The mesh binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `mesh-proxy`.
    pub proxy: PathBuf,
    /// `mesh-control`.
    pub control: PathBuf,
}

/// A control plane and two proxies: load → client proxy → server proxy → app.
#[derive(Debug)]
pub struct Mesh {
    /// The client-side proxy (outbound), where load is sent.
    pub client: Proc,
    /// The server-side proxy (inbound), beside the app.
    pub server: Proc,
    control: Proc,
    /// The client proxy's upstream listener, mapped to service `bench`.
    pub entry: SocketAddr,
}

impl Mesh {
    /// Starts the mesh in front of `app` and waits until the client proxy
    /// has resolved service `bench` to the server proxy.
    pub fn start(bins: &Bins, app: SocketAddr, proto: Proto, threads: usize, dir: &Path) -> anyhow::Result<Self> {
        let p = free_ports(6)?;
        let (grpc, control_admin, inbound, server_admin, entry, client_admin) =
            (loopback(p[0]), loopback(p[1]), loopback(p[2]), loopback(p[3]), loopback(p[4]), loopback(p[5]));
        let hint = match proto {
            Proto::Http1 => "http",
            Proto::Http2 => "http2",
        };
        let registry = dir.join(format!("registry-{}.yaml", proto.key()));
        let yaml = format!(
            "services:\n  - name: bench\n    ports:\n      - port: 80\n        protocol: {hint}\n    endpoints:\n      - address: {inbound}\n"
        );
        std::fs::write(&registry, yaml).with_context(|| format!("cannot write {}", registry.display()))?;

        let key = proto.key();
        let mut control = Proc::spawn(
            &format!("mesh-control-{key}"),
            &bins.control,
            &args(&[&"--registry-file", &registry.display(), &"--grpc-addr", &grpc, &"--admin-addr", &control_admin]),
            &[],
            dir,
        )?;
        wait_for("mesh-control /ready", STARTUP, &mut [&mut control], || ready(control_admin))?;

        let cp = format!("http://{grpc}");
        let mut server = Proc::spawn(
            &format!("server-proxy-{key}"),
            &bins.proxy,
            &args(&[
                &"--workload",
                &"bench",
                &"--control-plane",
                &cp,
                &"--admin-addr",
                &server_admin,
                &"--app",
                &app,
                &"--inbound-addr",
                &inbound,
                &"--threads",
                &threads,
            ]),
            &[],
            dir,
        )?;
        let mut client = Proc::spawn(
            &format!("client-proxy-{key}"),
            &bins.proxy,
            &args(&[
                &"--workload",
                &"bench-client",
                &"--control-plane",
                &cp,
                &"--admin-addr",
                &client_admin,
                &"--upstream",
                &format_args!("{entry}=bench.default:80"),
                &"--threads",
                &threads,
            ]),
            &[],
            dir,
        )?;
        let mut all = [&mut control, &mut server, &mut client];
        wait_for("the server proxy's /ready", STARTUP, &mut all, || ready(server_admin))?;
        wait_for("the client proxy's /ready", STARTUP, &mut all, || ready(client_admin))?;
        wait_for("the client proxy to resolve bench.default:80", STARTUP, &mut all, || resolved(client_admin))?;
        Ok(Self { client, server, control, entry })
    }

    /// The proxies, client first, for CPU and memory readings.
    pub fn proxies(&self) -> [&Proc; 2] {
        [&self.client, &self.server]
    }

    /// Fails, with its log, if any process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.control.check_alive()?;
        self.server.check_alive()?;
        self.client.check_alive()
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
