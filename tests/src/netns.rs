//! The host end-to-end lab: every workload is a Linux network namespace
//! ("pod") with a plain app, the real iptables rules of `mesh-proxy init`
//! and the real `mesh-proxy` binary running under its own UID.
//!
//! A lab owns a bridge namespace holding the bridge (the pods' "node"), one
//! namespace per pod wired to it with a veth pair, and a namespace for the
//! control plane. Nothing is added to the root namespace: no interface, no
//! route, no rule. Dropping a lab (also while a test panics) kills and reaps
//! every process it started and deletes every namespace it made, and with
//! them the bridge and the veths; [`Lab::finish`] then checks that nothing
//! was left behind.
//!
//! Everything runs through `ip netns exec NS ...`, which execs the command,
//! so a child's PID is the workload's own.

use crate::pcap;
use mesh_identity::dir::{ANCHORS, IdentityDir};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The UID proxies run as (and `mesh-proxy init` exempts).
pub const PROXY_UID: u32 = 2102;
/// The proxy's inbound port.
pub const INBOUND_PORT: u16 = 4143;
/// The proxy's transparent outbound port.
pub const OUTBOUND_PORT: u16 = 4140;
/// The proxy's admin port.
pub const ADMIN_PORT: u16 = 4191;
/// The control plane's gRPC port.
pub const CONTROL_PORT: u16 = 8086;
/// The control plane's admin port.
pub const CONTROL_ADMIN_PORT: u16 = 9990;
/// The trust domain of every lab's CA.
pub const TRUST_DOMAIN: &str = "mesh.test";

/// Every lab namespace's name starts with this, then the test process's PID.
pub const PREFIX: &str = "me2e";
/// The bridge, inside the lab's bridge namespace.
const BRIDGE: &str = "br0";
/// The pods' /24 (each lab is isolated, so every lab uses the same one).
const SUBNET: [u8; 3] = [10, 77, 0];

static LIVE_LABS: AtomicUsize = AtomicUsize::new(0);
static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);
static ROOT_BEFORE: OnceLock<String> = OnceLock::new();

/// Why the host e2e suite cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    let euid = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)?.parse::<u32>().ok())
    });
    if euid != Some(0) {
        return Some(format!("not root: effective uid {}", euid.map_or("unknown".into(), |u| u.to_string())));
    }
    for (tool, arg) in [
        ("ip", "-V"),
        ("iptables", "--version"),
        ("tcpdump", "--version"),
        ("curl", "--version"),
        ("setpriv", "--version"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{tool}` not found"));
        }
    }
    // Root without the capabilities (an unprivileged container, say).
    let ns = format!("{}probe", process_prefix());
    let add = run(Command::new("ip").args(["netns", "add", &ns]), Duration::from_secs(10));
    if !add.success() {
        return Some(format!("cannot create a network namespace: {}", add.stderr.trim()));
    }
    let nat =
        run(Command::new("ip").args(["netns", "exec", &ns, "iptables", "-t", "nat", "-S"]), Duration::from_secs(10));
    destroy_netns(&ns);
    if !nat.success() {
        return Some(format!("iptables cannot use the nat table in a namespace: {}", nat.stderr.trim()));
    }
    None
}

/// Reports a skip: prints it plainly, or panics when `CI=true` (in CI the
/// suite must run).
pub fn skipped(reason: &str) {
    let msg = format!("skipped: the host e2e suite needs root and iptables/iproute2/tcpdump ({reason})");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; CI=true, where a skip is a failure");
    }
    // Straight to the stream, past the test harness's output capture, so a
    // skip is visible in a plain `cargo test` run.
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Polls `f` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Output {
    /// Exit status (`None`: killed after the timeout).
    pub status: Option<ExitStatus>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Its exit code (`None`: killed).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?} after {:?}\nstdout: {}\nstderr: {}", self.code(), self.elapsed, self.stdout, self.stderr)
    }
}

/// Runs a command to completion, killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = started.elapsed();
    Output {
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        elapsed,
    }
}

/// Runs `argv` (in the root namespace), panicking unless it succeeds.
fn must(argv: &[&str]) -> String {
    let o = run(Command::new(argv[0]).args(&argv[1..]), Duration::from_secs(20));
    assert!(o.success(), "`{}` failed: {o}", argv.join(" "));
    o.stdout
}

fn netns_list() -> Vec<String> {
    let o = run(Command::new("ip").args(["netns", "list"]), Duration::from_secs(10));
    o.stdout.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// Kills what runs in a namespace and deletes it (best effort, for cleanup).
fn destroy_netns(ns: &str) {
    let pids = run(Command::new("ip").args(["netns", "pids", ns]), Duration::from_secs(10));
    for pid in pids.stdout.split_whitespace() {
        let _ = run(Command::new("kill").args(["-KILL", pid]), Duration::from_secs(5));
    }
    let _ = run(Command::new("ip").args(["netns", "del", ns]), Duration::from_secs(10));
}

/// What the suite must leave untouched in the root namespace: interfaces,
/// routes, policy rules and the nat tables.
fn root_state() -> String {
    let mut s = String::new();
    let links = run(Command::new("ip").args(["-o", "link", "show"]), Duration::from_secs(10)).stdout;
    for l in links.lines() {
        // "3: name: <FLAGS> ..." — the index and name identify an interface.
        let mut parts = l.splitn(3, ": ");
        let _ = writeln!(s, "link {}: {}", parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    }
    for argv in [
        &["ip", "route", "show", "table", "all"][..],
        &["ip", "rule", "show"],
        &["iptables", "-t", "nat", "-S"],
        &["ip6tables", "-t", "nat", "-S"],
    ] {
        let o = run(Command::new(argv[0]).args(&argv[1..]), Duration::from_secs(10));
        let _ = writeln!(s, "## {}\n{}", argv.join(" "), o.stdout.trim());
    }
    s
}

fn process_prefix() -> String {
    format!("{PREFIX}-{}-", std::process::id())
}

/// Namespaces of labs whose test process is gone (a run killed before its
/// labs could clean up): delete them so they cannot confuse this run.
fn remove_stale_namespaces() {
    for ns in netns_list() {
        let Some(rest) = ns.strip_prefix(&format!("{PREFIX}-")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing namespace {ns} left by an earlier run (process {pid} is gone)");
            destroy_netns(&ns);
        }
    }
}

/// A process the lab started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId(usize);

#[derive(Debug)]
struct Proc {
    name: String,
    ns: String,
    argv: Vec<String>,
    child: Option<Child>,
    out: PathBuf,
    log: PathBuf,
}

/// One workload's namespace.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its name in the lab.
    pub name: String,
    /// The namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// With a sidecar: its service account.
    pub service_account: Option<String>,
    /// Its proxy, once started.
    pub proxy: Option<ProcId>,
    /// Its apps.
    pub apps: Vec<ProcId>,
}

/// A service in the lab's registry.
#[derive(Debug, Clone)]
pub struct Service {
    /// Name (namespace `default`).
    pub name: String,
    /// Service account of its replicas (default: the name).
    pub service_account: Option<String>,
    /// Virtual IP.
    pub vip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// Port the replicas' apps listen on.
    pub target_port: u16,
    /// `http`, `http2`, `grpc`, `opaque`...
    pub protocol: String,
    /// The replicas' pod IPs.
    pub endpoints: Vec<Ipv4Addr>,
}

impl Service {
    /// A service with no endpoints yet.
    pub fn new(name: &str, vip: Ipv4Addr, port: u16, target_port: u16, protocol: &str) -> Self {
        Self {
            name: name.into(),
            service_account: None,
            vip,
            port,
            target_port,
            protocol: protocol.into(),
            endpoints: Vec::new(),
        }
    }

    /// With these endpoints.
    pub fn endpoints(mut self, ips: &[Ipv4Addr]) -> Self {
        self.endpoints = ips.to_vec();
        self
    }

    /// Running as this service account.
    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = Some(sa.into());
        self
    }

    /// The address apps dial: `vip:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.vip, self.port)
    }
}

/// Renders a registry file.
pub fn registry_yaml(services: &[Service]) -> String {
    let mut y = String::from("services:\n");
    for s in services {
        let _ = writeln!(y, "  - name: {}", s.name);
        if let Some(sa) = &s.service_account {
            let _ = writeln!(y, "    serviceAccount: {sa}");
        }
        let _ = writeln!(y, "    addresses: [\"{}\"]", s.vip);
        let _ = writeln!(y, "    ports:");
        let _ = writeln!(
            y,
            "      - port: {}\n        targetPort: {}\n        protocol: {}",
            s.port, s.target_port, s.protocol
        );
        if s.endpoints.is_empty() {
            let _ = writeln!(y, "    endpoints: []");
        } else {
            let _ = writeln!(y, "    endpoints:");
            for e in &s.endpoints {
                let _ = writeln!(y, "      - ip: \"{e}\"");
            }
        }
    }
    y
}

/// What an `http-load` run saw.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// 2xx responses.
    pub ok: u64,
    /// Failures (status or transport).
    pub failed: u64,
    /// Successes by `x-replica`.
    pub by_replica: BTreeMap<String, u64>,
    /// The first few failures.
    pub errors: Vec<String>,
}

/// A lab: namespaces on a bridge, a control plane, pods with sidecars.
#[derive(Debug)]
pub struct Lab {
    id: String,
    dir: tempfile::TempDir,
    bridge_ns: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    pods: BTreeMap<String, Pod>,
    next_host: u8,
    next_veth: usize,
    control: Option<ProcId>,
    control_ip: Option<Ipv4Addr>,
    identity: IdentityDir,
    services: Vec<Service>,
    test_app: String,
}

impl Lab {
    /// A new lab, or `None` (after reporting the skip) where the suite
    /// cannot run. `test_app` is the `mesh-test-app` binary
    /// (`env!("CARGO_BIN_EXE_mesh-test-app")` in the suite).
    pub fn start_or_skip(name: &str, test_app: &str) -> Option<Self> {
        if let Some(reason) = unavailable() {
            skipped(&reason);
            return None;
        }
        Some(Self::new(name, test_app))
    }

    /// A new lab: its bridge namespace and a fresh CA (identity directory).
    pub fn new(name: &str, test_app: &str) -> Self {
        ROOT_BEFORE.get_or_init(|| {
            remove_stale_namespaces();
            root_state()
        });
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}-{name}", process_prefix());
        let dir = tempfile::Builder::new().prefix(&format!("{id}-")).tempdir().unwrap();
        // The proxies (another UID) must reach their own files below.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        fs::create_dir(dir.path().join("logs")).unwrap();
        let identity = IdentityDir::new(dir.path().join("identity"));
        identity.init(TRUST_DOMAIN, None).unwrap();
        LIVE_LABS.fetch_add(1, Ordering::SeqCst);
        let bridge_ns = format!("{id}-br");
        let mut lab = Self {
            id,
            dir,
            bridge_ns: bridge_ns.clone(),
            namespaces: Vec::new(),
            procs: Vec::new(),
            pods: BTreeMap::new(),
            next_host: 10,
            next_veth: 0,
            control: None,
            control_ip: None,
            identity,
            services: Vec::new(),
            test_app: test_app.to_string(),
        };
        lab.add_netns(&bridge_ns);
        let gw = lab.gateway();
        lab.ip_in(&bridge_ns, &["link", "add", BRIDGE, "type", "bridge"]);
        lab.ip_in(&bridge_ns, &["addr", "add", &format!("{gw}/24"), "dev", BRIDGE]);
        lab.ip_in(&bridge_ns, &["link", "set", BRIDGE, "up"]);
        lab
    }

    /// This lab's namespace prefix.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bridge's address, every pod's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1)
    }

    /// The lab's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn add_netns(&mut self, ns: &str) {
        must(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        self.ip_in(ns, &["link", "set", "lo", "up"]);
    }

    fn ip_in(&self, ns: &str, args: &[&str]) {
        let mut argv = vec!["ip", "-n", ns];
        argv.extend_from_slice(args);
        must(&argv);
    }

    /// Makes a pod: a namespace with `eth0` on the bridge, an address and a
    /// default route via the bridge (so that virtual IPs are routable before
    /// the nat OUTPUT redirect). No sidecar yet: see [`Lab::mesh_pod`].
    pub fn add_pod(&mut self, name: &str) -> Ipv4Addr {
        assert!(!self.pods.contains_key(name), "pod {name} exists");
        let ns = format!("{}-{name}", self.id);
        let ip = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], self.next_host);
        self.next_host += 1;
        let veth = format!("veth{}", self.next_veth);
        self.next_veth += 1;
        self.add_netns(&ns);
        let br = self.bridge_ns.clone();
        self.ip_in(&br, &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        self.ip_in(&br, &["link", "set", &veth, "master", BRIDGE, "up"]);
        self.ip_in(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        self.ip_in(&ns, &["link", "set", "eth0", "up"]);
        self.ip_in(&ns, &["route", "add", "default", "via", &self.gateway().to_string()]);
        self.pods.insert(
            name.to_string(),
            Pod { name: name.into(), ns, ip, service_account: None, proxy: None, apps: Vec::new() },
        );
        ip
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.get(name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Runs a command inside a pod's namespace to completion.
    pub fn exec(&self, pod: &str, argv: &[&str], timeout: Duration) -> Output {
        let ns = &self.pod(pod).ns;
        self.exec_ns(ns, argv, timeout)
    }

    fn exec_ns(&self, ns: &str, argv: &[&str], timeout: Duration) -> Output {
        run(Command::new("ip").args(["netns", "exec", ns]).args(argv), timeout)
    }

    /// `curl` from a pod (silent, errors shown, 5 s limit) plus `args`.
    pub fn curl(&self, pod: &str, args: &[&str]) -> Output {
        let mut argv = vec!["curl", "-sS", "--max-time", "5"];
        argv.extend_from_slice(args);
        self.exec(pod, &argv, Duration::from_secs(10))
    }

    /// The test app binary's subcommand run in a pod to completion.
    pub fn app_exec(&self, pod: &str, args: &[&str], timeout: Duration) -> Output {
        let mut argv = vec![self.test_app.as_str()];
        argv.extend_from_slice(args);
        self.exec(pod, &argv, timeout)
    }

    /// Starts a long-running process in a namespace; its stdout and stderr
    /// go to files in the lab directory.
    fn spawn_ns(&mut self, ns: &str, name: &str, argv: Vec<String>) -> ProcId {
        let logs = self.dir.path().join("logs");
        let idx = self.procs.len();
        let base = format!("{idx:02}-{name}");
        let mut p = Proc {
            name: name.into(),
            ns: ns.into(),
            argv,
            child: None,
            out: logs.join(format!("{base}.out")),
            log: logs.join(format!("{base}.log")),
        };
        start(&mut p);
        self.procs.push(p);
        ProcId(idx)
    }

    /// Starts a test app (`mesh-test-app ARGS`) in a pod and waits until it
    /// listens.
    pub fn start_app(&mut self, pod: &str, name: &str, args: &[&str]) -> ProcId {
        let ns = self.pod(pod).ns.clone();
        let mut argv = vec![self.test_app.clone()];
        argv.extend(args.iter().map(|s| s.to_string()));
        let id = self.spawn_ns(&ns, name, argv);
        self.pods.get_mut(pod).unwrap().apps.push(id);
        self.wait_output(id, "listening on", Duration::from_secs(10));
        id
    }

    /// Starts a process in a pod without waiting for anything.
    pub fn spawn(&mut self, pod: &str, name: &str, argv: &[&str]) -> ProcId {
        let ns = self.pod(pod).ns.clone();
        let id = self.spawn_ns(&ns, name, argv.iter().map(|s| s.to_string()).collect());
        self.pods.get_mut(pod).unwrap().apps.push(id);
        id
    }

    /// Waits until a process's stdout or stderr contains `needle`.
    pub fn wait_output(&mut self, id: ProcId, needle: &str, timeout: Duration) {
        let ok = eventually(timeout, || {
            if self.exited(id).is_some() {
                panic!("{} exited before printing {needle:?}:\n{}", self.procs[id.0].name, self.logs(id));
            }
            self.stdout(id).contains(needle) || self.stderr(id).contains(needle)
        });
        assert!(ok, "{} never printed {needle:?}:\n{}", self.procs[id.0].name, self.logs(id));
    }

    /// A process's stdout so far.
    pub fn stdout(&self, id: ProcId) -> String {
        fs::read_to_string(&self.procs[id.0].out).unwrap_or_default()
    }

    /// A process's stderr so far.
    pub fn stderr(&self, id: ProcId) -> String {
        fs::read_to_string(&self.procs[id.0].log).unwrap_or_default()
    }

    /// Both, for messages.
    pub fn logs(&self, id: ProcId) -> String {
        let p = &self.procs[id.0];
        format!(
            "--- {} in {} ({:?})\n{}{}",
            p.name,
            p.ns,
            p.argv,
            tail(&self.stdout(id), 40),
            tail(&self.stderr(id), 40)
        )
    }

    /// Its exit status, if it has exited (reaping it).
    pub fn exited(&mut self, id: ProcId) -> Option<ExitStatus> {
        let child = self.procs[id.0].child.as_mut()?;
        child.try_wait().unwrap()
    }

    /// Its PID while running.
    pub fn pid(&self, id: ProcId) -> Option<u32> {
        self.procs[id.0].child.as_ref().map(Child::id)
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`...).
    pub fn signal(&mut self, id: ProcId, sig: &str) {
        let pid = self.pid(id).expect("not running");
        let o = run(Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]), Duration::from_secs(5));
        assert!(o.success(), "kill -{sig} {pid}: {o}");
    }

    /// Waits for it to exit.
    pub fn wait_exit(&mut self, id: ProcId, timeout: Duration) -> ExitStatus {
        let mut status = None;
        let done = eventually(timeout, || {
            status = self.exited(id);
            status.is_some()
        });
        assert!(done, "{} did not exit within {timeout:?}:\n{}", self.procs[id.0].name, self.logs(id));
        self.procs[id.0].child = None;
        status.unwrap()
    }

    /// SIGKILLs it and reaps it.
    pub fn kill(&mut self, id: ProcId) {
        stop(&mut self.procs[id.0]);
    }

    /// Starts it again with the same command line (logs are appended).
    pub fn restart(&mut self, id: ProcId) {
        stop(&mut self.procs[id.0]);
        start(&mut self.procs[id.0]);
    }

    // ---- the control plane ----

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

    // ---- sidecars ----

    /// Puts a pod in the mesh as `service_account`: runs `mesh-proxy init`
    /// in its namespace, gives it a join token, starts its proxy as UID
    /// 2102 and waits until the proxy is ready (holds a certificate).
    pub fn mesh_pod(&mut self, pod: &str, service_account: &str) -> ProcId {
        let init = self.init_pod(pod, &[]);
        assert!(init.success() && init.stdout.contains("IPv4: inbound"), "mesh-proxy init in {pod} failed: {init}");
        self.start_proxy(pod, service_account)
    }

    /// Runs `mesh-proxy init --proxy-uid 2102 ARGS` in a pod.
    pub fn init_pod(&self, pod: &str, args: &[&str]) -> Output {
        let proxy = self.proxy_binary();
        let uid = PROXY_UID.to_string();
        let mut argv = vec![proxy.as_str(), "init", "--proxy-uid", &uid];
        argv.extend_from_slice(args);
        self.exec(pod, &argv, Duration::from_secs(30))
    }

    /// Starts a pod's proxy (transparent, with a join token for
    /// `service_account`) as UID 2102 and waits until it is ready.
    pub fn start_proxy(&mut self, pod: &str, service_account: &str) -> ProcId {
        let ns = self.pod(pod).ns.clone();
        let proxy = self.proxy_binary();

        // The proxy's own files, readable by its UID only.
        let pods_dir = self.dir.path().join("pods");
        fs::create_dir_all(&pods_dir).unwrap();
        fs::set_permissions(&pods_dir, fs::Permissions::from_mode(0o711)).unwrap();
        let own = pods_dir.join(pod);
        fs::create_dir_all(&own).unwrap();
        let token = own.join("token");
        let anchors = own.join("trust-anchors.pem");
        fs::write(&token, self.identity.mint_token("default", service_account, Duration::from_secs(3600)).unwrap())
            .unwrap();
        fs::copy(self.identity.path().join(ANCHORS), &anchors).unwrap();
        for (p, mode) in [(&own, 0o700), (&token, 0o600), (&anchors, 0o644)] {
            std::os::unix::fs::chown(p, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        }

        let cp = self.control_ip.expect("start the control plane before meshing pods");
        let argv: Vec<String> = [
            "setpriv",
            "--reuid",
            &PROXY_UID.to_string(),
            "--regid",
            &PROXY_UID.to_string(),
            "--clear-groups",
            &proxy,
            "--transparent",
            "--workload",
            pod,
            "--inbound-addr",
            &format!("0.0.0.0:{INBOUND_PORT}"),
            "--outbound-addr",
            &format!("127.0.0.1:{OUTBOUND_PORT}"),
            "--admin-addr",
            &format!("0.0.0.0:{ADMIN_PORT}"),
            "--control-plane",
            &format!("http://{cp}:{CONTROL_PORT}"),
            "--identity-token-file",
            &token.display().to_string(),
            "--trust-anchors",
            &anchors.display().to_string(),
            "--shutdown-grace",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let id = self.spawn_ns(&ns, &format!("{pod}-proxy"), argv);
        let p = self.pods.get_mut(pod).unwrap();
        p.proxy = Some(id);
        p.service_account = Some(service_account.into());
        self.wait_proxy_ready(pod);
        // The process itself (setpriv execs it) runs as the proxy's UID,
        // which is what the iptables owner match exempts.
        let pid = self.pid(id).unwrap();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids: Vec<&str> =
            status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().skip(1).collect();
        assert!(uids.iter().all(|u| *u == PROXY_UID.to_string()), "the proxy of {pod} runs as uids {uids:?}");
        id
    }

    /// The `mesh-proxy` binary as a path UID 2102 can execute: the build's
    /// own when every directory above it lets others in, else a copy in the
    /// lab directory (a checkout under a private home, say).
    fn proxy_binary(&self) -> String {
        let built = crate::bins::path("mesh-proxy");
        let others_can = |p: &Path, bits: u32| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & bits == bits);
        if others_can(&built, 0o005) && built.ancestors().skip(1).all(|d| others_can(d, 0o001)) {
            return built.display().to_string();
        }
        let copy = self.dir.path().join("mesh-proxy");
        if !copy.exists() {
            fs::copy(&built, &copy).unwrap();
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        }
        copy.display().to_string()
    }

    /// The pod's proxy process.
    pub fn proxy(&self, pod: &str) -> ProcId {
        self.pod(pod).proxy.unwrap_or_else(|| panic!("{pod} has no proxy"))
    }

    /// Waits until the pod's proxy reports ready.
    pub fn wait_proxy_ready(&mut self, pod: &str) {
        let id = self.proxy(pod);
        let ok = eventually(Duration::from_secs(15), || {
            assert!(self.exited(id).is_none(), "the proxy of {pod} exited:\n{}", self.logs(id));
            self.admin_get(pod, "/ready").starts_with("ready")
        });
        assert!(ok, "the proxy of {pod} never became ready:\n{}\n{}", self.admin_get(pod, "/config"), self.logs(id));
    }

    /// GETs a path of the pod's proxy admin server (from inside the pod).
    pub fn admin_get(&self, pod: &str, path: &str) -> String {
        self.curl(pod, &["--max-time", "2", &format!("http://127.0.0.1:{ADMIN_PORT}{path}")]).stdout
    }

    /// The endpoint addresses the pod's proxy holds for `target` (`vip:port`).
    pub fn proxy_endpoints(&self, pod: &str, target: &str) -> Option<BTreeSet<String>> {
        let config: serde_json::Value = serde_json::from_str(&self.admin_get(pod, "/config")).ok()?;
        let t = config["targets"].as_array()?.iter().find(|t| t["target"] == target)?;
        Some(t["endpoints"].as_array()?.iter().filter_map(|e| e["address"].as_str().map(str::to_string)).collect())
    }

    /// Waits until the pod's proxy holds exactly `ips` (on `port`) for `target`.
    pub fn wait_proxy_endpoints(&self, pod: &str, target: &str, ips: &[Ipv4Addr], port: u16, timeout: Duration) {
        let want: BTreeSet<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
        let ok = eventually(timeout, || self.proxy_endpoints(pod, target).is_some_and(|have| have == want));
        assert!(ok, "{pod}'s proxy never held {want:?} for {target}; it holds {:?}", self.proxy_endpoints(pod, target));
    }

    /// Sums the pod's proxy metric lines containing every fragment.
    pub fn proxy_metric(&self, pod: &str, parts: &[&str]) -> f64 {
        crate::mesh::metric_sum(&self.admin_get(pod, "/metrics"), parts)
    }

    /// Kills a pod's processes (SIGKILL) and deletes its namespace, and with
    /// it its end of the bridge.
    pub fn delete_pod(&mut self, name: &str) {
        let pod = self.pods.remove(name).unwrap_or_else(|| panic!("no pod {name}"));
        for id in pod.apps.iter().chain(pod.proxy.iter()) {
            stop(&mut self.procs[id.0]);
        }
        destroy_netns(&pod.ns);
        self.namespaces.retain(|n| *n != pod.ns);
        assert!(!netns_list().contains(&pod.ns), "namespace {} still exists", pod.ns);
    }

    // ---- load ----

    /// Starts `mesh-test-app http-load` in a pod (until stopped, at most 2 min).
    pub fn start_load(&mut self, pod: &str, url: &str, concurrency: usize, pause: Duration) -> ProcId {
        let app = self.test_app.clone();
        let argv = [
            app.as_str(),
            "http-load",
            "--url",
            url,
            "--duration",
            "120s",
            "--concurrency",
            &concurrency.to_string(),
            "--pause",
            &format!("{}ms", pause.as_millis()),
            "--json",
        ];
        let id = self.spawn(pod, "http-load", &argv);
        self.wait_output(id, "progress", Duration::from_secs(10));
        id
    }

    /// The latest `(ok, failed)` a running load reported.
    pub fn load_progress(&self, id: ProcId) -> (u64, u64) {
        let log = self.stderr(id);
        let Some(line) = log.lines().rev().find(|l| l.starts_with("progress ")) else { return (0, 0) };
        let field =
            |k: &str| line.split_whitespace().find_map(|f| f.strip_prefix(k)).and_then(|v| v.parse().ok()).unwrap_or(0);
        (field("ok="), field("failed="))
    }

    /// Waits until the load has `ok` successes in all.
    pub fn wait_load_ok(&self, id: ProcId, ok: u64, timeout: Duration) {
        let done = eventually(timeout, || self.load_progress(id).0 >= ok);
        assert!(done, "the load never reached {ok} successes: {:?}\n{}", self.load_progress(id), self.logs(id));
    }

    /// Stops a load (SIGTERM) and returns what it saw.
    pub fn stop_load(&mut self, id: ProcId) -> LoadResult {
        self.signal(id, "TERM");
        let st = self.wait_exit(id, Duration::from_secs(20));
        assert!(st.success(), "http-load failed: {st}\n{}", self.logs(id));
        parse_load(&self.stdout(id))
    }

    // ---- capture ----

    /// Starts `tcpdump` on the bridge (in the bridge namespace), capturing
    /// every TCP packet between the lab's namespaces; returns once it captures.
    pub fn start_capture(&mut self) -> ProcId {
        let ns = self.bridge_ns.clone();
        let argv = ["tcpdump", "-i", BRIDGE, "-n", "-U", "--immediate-mode", "-s", "0", "-w", "-", "tcp"];
        let id = self.spawn_ns(&ns, "tcpdump", argv.iter().map(|s| s.to_string()).collect());
        self.wait_output(id, "listening on", Duration::from_secs(10));
        id
    }

    /// Stops the capture and parses what it wrote.
    pub fn stop_capture(&mut self, id: ProcId) -> pcap::Capture {
        self.signal(id, "INT");
        self.wait_exit(id, Duration::from_secs(10));
        let bytes = fs::read(&self.procs[id.0].out).unwrap();
        pcap::parse(&bytes).unwrap_or_else(|e| panic!("bad capture: {e}\n{}", self.logs(id)))
    }

    /// Tears the lab down, then checks that nothing of it is left: no
    /// namespace with its prefix, the root namespace as it was before the
    /// first lab (and, once no lab is live, no namespace of this test process).
    pub fn finish(self) {
        let id = self.id.clone();
        drop(self);
        assert_clean(&id);
    }
}

/// Asserts that no namespace of lab `id` exists and the root namespace is
/// unchanged; with no lab live, also that no namespace of this process exists.
pub fn assert_clean(id: &str) {
    let left: Vec<String> = netns_list().into_iter().filter(|n| n.starts_with(&format!("{id}-"))).collect();
    assert!(left.is_empty(), "namespaces left behind by lab {id}: {left:?}");
    if let Some(before) = ROOT_BEFORE.get() {
        let now = root_state();
        assert!(*before == now, "the root namespace changed:\n--- before\n{before}\n--- now\n{now}");
    }
    if LIVE_LABS.load(Ordering::SeqCst) == 0 {
        let prefix = process_prefix();
        let left: Vec<String> = netns_list().into_iter().filter(|n| n.starts_with(&prefix)).collect();
        assert!(left.is_empty(), "namespaces left behind by this test process: {left:?}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut dump = String::new();
            for i in 0..self.procs.len() {
                let _ = writeln!(dump, "{}", self.logs(ProcId(i)));
            }
            eprintln!("==== lab {} failed; its processes' output:\n{dump}", self.id);
        }
        for p in self.procs.iter_mut().rev() {
            stop(p);
        }
        for ns in self.namespaces.iter().rev() {
            destroy_netns(ns);
        }
        LIVE_LABS.fetch_sub(1, Ordering::SeqCst);
    }
}

fn start(p: &mut Proc) {
    let open = |path: &Path| OpenOptions::new().create(true).append(true).open(path).unwrap();
    let out: File = open(&p.out);
    let log: File = open(&p.log);
    let child = Command::new("ip")
        .args(["netns", "exec", &p.ns])
        .args(&p.argv)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", p.name));
    p.child = Some(child);
}

fn stop(p: &mut Proc) {
    if let Some(mut c) = p.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].iter().map(|l| format!("{l}\n")).collect()
}

/// Parses `http-load --json` output.
pub fn parse_load(stdout: &str) -> LoadResult {
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON in {stdout:?}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    LoadResult {
        ok: v["ok"].as_u64().unwrap(),
        failed: v["failed"].as_u64().unwrap(),
        by_replica: v["by_replica"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
            .collect(),
        errors: v["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap_or("").to_string()).collect(),
    }
}
