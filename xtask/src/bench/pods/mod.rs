//! The pods topology: the mesh as Kubernetes runs it, in network namespaces.
//!
//! Two pods (network namespaces) each have `eth0`, one end of a veth pair
//! whose other end is on a bridge in a third namespace, the node, where the
//! control plane runs (as its own pod would; in a meshed pod the rules would
//! redirect its connections). The server pod runs nginx (and the gRPC test
//! app), the client pod the load generator (`ip netns exec`), which targets
//! the server pod's IP and port. Each meshed pod runs `mesh-proxy init` as
//! the injector's init container does and its proxy as UID 2102, so the
//! proxies intercept the load transparently. The direct path runs with the
//! rules removed (`mesh-proxy init --cleanup`), Envoy's pair with rules of
//! its own ([`envoy`]): before each run the bench installs the rules of the
//! path it measures. Nothing is added to the root
//! namespace. Namespaces are named after xtask's PID and deleted when the
//! table ends, on an error, on Ctrl-C or SIGTERM, and (left by a killed run)
//! at the start of the next.

pub mod envoy;
mod mesh;
pub mod plan;

use crate::procs::output_with_timeout;
use anyhow::{Context, bail};
use mesh_process::{Child, Spec};
use plan::{Names, ProxyPorts};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a pod's process gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long one `ip`, `iptables` or `curl` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Namespaces of this process that exist now: what a signal deletes.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Sets of pods made so far by this process.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Why the pods topology cannot run here, if it cannot: not root, a tool
/// missing, or no right to make namespaces.
pub fn unavailable() -> Option<String> {
    let euid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)?.parse::<u32>().ok())
    });
    if euid != Some(0) {
        return Some(format!("not root (effective uid {})", euid.map_or("unknown".into(), |u| u.to_string())));
    }
    for tool in ["ip", "iptables", "setpriv", "curl"] {
        if super::loadgen::which(tool).is_none() && !Path::new("/usr/sbin").join(tool).is_file() {
            return Some(format!("`{tool}` not found"));
        }
    }
    None
}

/// What the pods topology needs, for messages.
pub const NEEDS: &str = "root (to make network namespaces and iptables rules), iproute2 (`ip`), iptables, \
                         setpriv (util-linux) and curl";

/// Runs `program ARGS` to completion (killed after [`COMMAND_TIMEOUT`]);
/// fails with its output unless it exits 0. Its stdout.
fn must(program: &str, args: &[String]) -> anyhow::Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let out = output_with_timeout(crate::procs::command(Path::new(program)).args(args), COMMAND_TIMEOUT)
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS` in front of `argv`.
pub fn in_netns(ns: &str, argv: &[String]) -> Vec<String> {
    ["netns", "exec", ns].iter().map(|s| s.to_string()).chain(argv.iter().cloned()).collect()
}

/// `GET path` from inside namespace `ns` (with curl): status and body.
pub fn http_get_in(ns: &str, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let url = format!("http://{addr}{path}");
    let argv: Vec<String> =
        ["curl", "-sS", "--max-time", "2", "-w", "\n%{http_code}", &url].iter().map(|s| s.to_string()).collect();
    let text = must("ip", &in_netns(ns, &argv))?;
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code.trim().parse().with_context(|| format!("no HTTP status from {url} in {ns}"))?;
    Ok((status, body.to_string()))
}

/// Kills what runs in `ns` and deletes it (best effort: for cleanup).
fn destroy(ns: &str) {
    let quiet = |args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(args);
        output_with_timeout(&mut cmd, COMMAND_TIMEOUT).ok()
    };
    if let Some(out) = quiet(&["netns", "pids", ns]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = output_with_timeout(Command::new("kill").args(["-KILL", pid]), COMMAND_TIMEOUT);
        }
    }
    let _ = quiet(&["netns", "del", ns]);
}

/// Deletes every namespace of this process now: the signal handler's work.
fn destroy_live() {
    let names = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for ns in names.iter().rev() {
        destroy(ns);
    }
}

/// Once per process: on SIGINT (Ctrl-C) or SIGTERM, delete the live
/// namespaces and exit 130 (children die with xtask: their parent-death signal).
fn handle_signals() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let spawned = std::thread::Builder::new().name("pods-signals".into()).spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
                else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
                eprintln!("\ninterrupted: deleting the bench's network namespaces");
                destroy_live();
                std::process::exit(130);
            });
        });
        if let Err(e) = spawned {
            eprintln!("warning: no signal handler for the pods' cleanup: {e}");
        }
    });
}

/// Deletes namespaces left by bench runs whose process is gone.
fn remove_stale() {
    let Ok(list) = must("ip", &["netns".into(), "list".into()]) else { return };
    for ns in plan::stale(&list, |pid| Path::new(&format!("/proc/{pid}")).exists()) {
        eprintln!("note: deleting namespace {ns}, left by an earlier bench run that is gone");
        destroy(&ns);
    }
}

/// The namespaces of one set of pods: made on creation, deleted on drop.
#[derive(Debug)]
struct Namespaces(Names, usize);

impl Namespaces {
    fn create() -> anyhow::Result<Self> {
        handle_signals();
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let names = Names::new(std::process::id(), n);
        if let Ok(mut live) = LIVE.lock() {
            live.extend(names.all().iter().map(|s| s.to_string()));
        }
        // From here, dropping it (an error below) deletes what was made.
        let made = Self(names, n);
        for cmd in plan::setup(&made.0) {
            must("ip", &cmd).context("cannot make the pods' network namespaces")?;
        }
        Ok(made)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.all().iter().rev() {
            destroy(ns);
        }
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|n| !self.0.all().contains(&n.as_str()));
        }
    }
}

/// Starts `argv` (wrapped by `wrap`, e.g. `setpriv ...`) in namespace
/// `ns` as a supervised child logging to `<dir>/<name>.log`.
pub fn spawn_in(ns: &str, name: &str, wrap: &[String], argv: &[String], dir: &Path) -> anyhow::Result<Child> {
    let (program, args) = argv.split_first().context("an empty command")?;
    let spec = Spec::new(name, program, dir.join(format!("{name}.log")))
        .args(args)
        .wrap(["ip", "netns", "exec", ns].iter().map(|s| s.to_string()).chain(wrap.iter().cloned()))
        .stop_grace(STOP_GRACE);
    Ok(Child::spawn(spec)?)
}

/// Polls `ready` every 50 ms until it returns `None`, failing after
/// `timeout` or when `proc` exits.
pub fn wait(
    what: &str,
    proc: &Child,
    timeout: Duration,
    mut ready: impl FnMut() -> Option<String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        proc.check().with_context(|| format!("while waiting for {what}"))?;
        let Some(why) = ready() else { return Ok(()) };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {why}\n{}", proc.log_tail(15));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whose interception rules the pods have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// `mesh-proxy init` for the table's `i`th mesh.
    Mesh(usize),
    /// Envoy's pair, Istio-style ([`envoy::rules`]).
    Envoy,
}

/// One set of pods for a table, with its apps; meshes are started in it
/// separately ([`super::topology::Mesh::in_pods`]).
#[derive(Debug)]
pub struct Pods {
    /// The server pod's nginx.
    nginx: Child,
    /// The server pod's gRPC test app.
    grpc: Option<Child>,
    /// Whose rules are installed in both pods (`None`: none).
    installed: Option<Rules>,
    /// The proxy binary, as a path the proxy UID can execute.
    pub proxy_bin: PathBuf,
    /// The pods' own files (tokens readable by the proxy UID only).
    pub dir: PathBuf,
    ns: Namespaces,
}

impl Pods {
    /// Makes the namespaces and starts the server pod's apps: nginx on
    /// HTTP/1.1 and h2c, and with `grpc` the test app's Echo server.
    pub fn start(nginx_bin: &Path, bins: &crate::mesh::Bins, grpc: bool, scratch: &Path) -> anyhow::Result<Self> {
        let ns = Namespaces::create()?;
        let n = ns.1;
        let dir = scratch.join(format!("pods-{n}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // The proxy UID must reach its files below.
        for d in [scratch, dir.as_path()] {
            let mode = std::fs::metadata(d)?.permissions().mode();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o711))?;
        }
        let proxy_bin = executable_by_others(&bins.proxy, &dir)?;
        let server = ns.0.server.clone();

        let servers = format!(
            "  server {{\n    listen 0.0.0.0:{};\n    listen 0.0.0.0:{} http2;\n    location / {{ return 200 \"ok\"; }}\n  }}\n",
            plan::APP_HTTP1,
            plan::APP_HTTP2
        );
        let name = format!("pods{n}-nginx");
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, super::topology::config(&dir, &name, &servers))?;
        let d = dir.display().to_string();
        let nginx_args = |test: bool| -> Vec<String> {
            let mut a = vec![nginx_bin.display().to_string()];
            if test {
                a.push("-t".into());
            }
            a.extend(["-p".into(), format!("{d}/"), "-c".into(), conf.display().to_string()]);
            a
        };
        must("ip", &in_netns(&server, &nginx_args(true))).context("nginx rejected the server pod's config")?;
        let nginx = spawn_in(&server, &name, &[], &nginx_args(false), &dir)?;
        let probe = SocketAddr::from(([127, 0, 0, 1], plan::APP_HTTP1));
        wait("the server pod's nginx", &nginx, crate::mesh::STARTUP, || match http_get_in(&server, probe, "/") {
            Ok((200, body)) if body == "ok" => None,
            Ok((s, b)) => Some(format!("GET / answered {s} {b:?}")),
            Err(e) => Some(format!("{e:#}")),
        })?;
        let grpc = if grpc {
            let listen = format!("0.0.0.0:{}", plan::APP_GRPC);
            let argv: Vec<String> =
                [bins.test_app.display().to_string(), "grpc-server".into(), "--listen".into(), listen]
                    .into_iter()
                    .chain(["--name".into(), "bench".into()])
                    .collect();
            let app = spawn_in(&server, &format!("pods{n}-grpc-server"), &[], &argv, &dir)?;
            let open = format!("exec 3<>/dev/tcp/127.0.0.1/{}", plan::APP_GRPC);
            let check: Vec<String> = vec!["bash".into(), "-c".into(), open];
            wait("the server pod's gRPC app", &app, crate::mesh::STARTUP, || {
                must("ip", &in_netns(&server, &check)).err().map(|e| format!("{e:#}"))
            })?;
            Some(app)
        } else {
            None
        };
        Ok(Self { nginx, grpc, installed: None, proxy_bin, dir, ns })
    }

    /// The namespaces' names.
    pub fn names(&self) -> &Names {
        &self.ns.0
    }

    /// The backend's process for `proto`'s table: nginx or the gRPC app.
    pub fn backend_pid(&self, proto: super::loadgen::Proto) -> u32 {
        match (proto, &self.grpc) {
            (p, Some(g)) if p.is_grpc() => g.pid(),
            _ => self.nginx.pid(),
        }
    }

    /// The server pod's address for `proto`: where every path's load goes.
    pub fn target(proto: super::loadgen::Proto) -> SocketAddr {
        let port = match proto {
            super::loadgen::Proto::Http1 => plan::APP_HTTP1,
            super::loadgen::Proto::Http2 => plan::APP_HTTP2,
            super::loadgen::Proto::Grpc | super::loadgen::Proto::GrpcStream => plan::APP_GRPC,
        };
        SocketAddr::from((plan::server_ip(), port))
    }

    /// Makes both pods' rules those of `path` (`None`: the direct path, no
    /// rules): removes the rules installed (`mesh-proxy init --cleanup`, or
    /// Envoy's), then installs `mesh-proxy init` as injected, or Envoy's.
    pub fn route(&mut self, path: Option<Rules>) -> anyhow::Result<()> {
        if self.installed == path {
            return Ok(());
        }
        let pods = [self.ns.0.client.clone(), self.ns.0.server.clone()];
        let bin = self.proxy_bin.display().to_string();
        let init = |i: usize, cleanup: bool| -> Vec<String> {
            std::iter::once(bin.clone()).chain(plan::init_args(ProxyPorts::of_mesh(i), cleanup)).collect()
        };
        match self.installed.take() {
            Some(Rules::Mesh(i)) => {
                for pod in &pods {
                    must("ip", &in_netns(pod, &init(i, true)))
                        .with_context(|| format!("cannot remove the rules in {pod}"))?;
                }
            }
            Some(Rules::Envoy) => {
                for pod in &pods {
                    for cmd in envoy::removal() {
                        let argv: Vec<String> = std::iter::once("iptables".to_string()).chain(cmd).collect();
                        must("ip", &in_netns(pod, &argv))
                            .with_context(|| format!("cannot remove Envoy's rules in {pod}"))?;
                    }
                }
            }
            None => {}
        }
        match path {
            Some(Rules::Mesh(i)) => {
                for pod in &pods {
                    must("ip", &in_netns(pod, &init(i, false)))
                        .with_context(|| format!("`mesh-proxy init` failed in {pod}"))?;
                }
            }
            Some(Rules::Envoy) => {
                let file = self.dir.join("envoy-rules.txt");
                std::fs::write(&file, envoy::rules()).with_context(|| format!("cannot write {}", file.display()))?;
                for pod in &pods {
                    let argv = vec!["iptables-restore".to_string(), "--noflush".into(), file.display().to_string()];
                    must("ip", &in_netns(pod, &argv))
                        .with_context(|| format!("cannot install Envoy's rules in {pod}"))?;
                }
            }
            None => {}
        }
        self.installed = path;
        Ok(())
    }
}

/// `bin` if every user may execute it (and reach it), else a copy in `dir`.
fn executable_by_others(bin: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let others = |p: &Path, bits: u32| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & bits == bits);
    if others(bin, 0o005) && bin.ancestors().skip(1).all(|d| d.as_os_str().is_empty() || others(d, 0o001)) {
        return Ok(bin.to_path_buf());
    }
    let copy = dir.join("mesh-proxy");
    std::fs::copy(bin, &copy).with_context(|| format!("cannot copy {} for the proxy UID", bin.display()))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    Ok(copy)
}

/// Copies `file` to `<dir>/<name>` owned by the proxy UID, with `mode`.
pub fn give_proxy(file: &Path, dir: &Path, name: &str, mode: u32) -> anyhow::Result<PathBuf> {
    give_to(plan::PROXY_UID, file, dir, name, mode)
}

/// Copies `file` to `<dir>/<name>` owned by `uid`, with `mode`.
pub fn give_to(uid: u32, file: &Path, dir: &Path, name: &str, mode: u32) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let to = dir.join(name);
    std::fs::copy(file, &to).with_context(|| format!("cannot copy {} to {}", file.display(), to.display()))?;
    for (p, m) in [(dir, 0o700), (to.as_path(), mode)] {
        std::os::unix::fs::chown(p, Some(uid), Some(uid))
            .with_context(|| format!("cannot give {} to UID {uid}", p.display()))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))?;
    }
    Ok(to)
}
