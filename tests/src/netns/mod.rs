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
//! so a child's PID is the workload's own. Long-running processes are
//! supervised by `mesh_process` (they die with the test's thread, even a
//! killed one, and are reaped as soon as they exit).
//!
//! The harness is split by concern: [`checks`] (whether the suite can run,
//! and that nothing is left behind), [`procs`] (commands and processes in
//! namespaces), [`pods`] (pods on the bridge and their sidecars),
//! [`control`] (the registry and the control plane) and [`traffic`] (load
//! and packet capture).

mod checks;
mod control;
mod pods;
mod procs;
mod traffic;

pub use checks::{assert_clean, skipped, unavailable};
pub use control::{Service, registry, registry_yaml};
pub use pods::Pod;
pub use procs::{Output, ProcId, eventually, run};
pub use traffic::{LoadResult, parse_load};

use checks::{ROOT_BEFORE, destroy_netns, process_prefix, remove_stale_namespaces, root_state};
use mesh_identity::dir::IdentityDir;
use procs::{Proc, STOP_GRACE, stop};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

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
/// The pods' IPv6 /64 (a ULA): every pod is dual-stack, host N being
/// `10.77.0.N` and `fd00:77::N`.
const SUBNET6: [u16; 4] = [0xfd00, 0x77, 0, 0];

static LIVE_LABS: AtomicUsize = AtomicUsize::new(0);
static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

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
        // nodad: the address is usable at once, not after duplicate detection.
        let gw6 = lab.gateway6();
        lab.ip_in(&bridge_ns, &["-6", "addr", "add", &format!("{gw6}/64"), "dev", BRIDGE, "nodad"]);
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

    /// The bridge's IPv6 address, every pod's IPv6 default gateway.
    pub fn gateway6(&self) -> Ipv6Addr {
        host6(1)
    }

    /// The lab's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

/// Host `n`'s IPv6 address on the bridge.
fn host6(n: u8) -> Ipv6Addr {
    let [a, b, c, d] = SUBNET6;
    Ipv6Addr::new(a, b, c, d, 0, 0, 0, u16::from(n))
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
        // Every process at once: SIGTERM, then SIGKILL after the grace.
        let running: Vec<&mesh_process::Child> = self.procs.iter().filter_map(|p| p.child.as_ref()).collect();
        mesh_process::stop_all(&running, STOP_GRACE);
        for p in self.procs.iter_mut().rev() {
            stop(p);
        }
        for ns in self.namespaces.iter().rev() {
            destroy_netns(ns);
        }
        LIVE_LABS.fetch_sub(1, Ordering::SeqCst);
    }
}
