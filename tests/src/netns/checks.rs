//! Whether the suite can run here (and reporting a skip), and checks that
//! a lab leaves nothing behind: no namespace, no change to the root namespace.

use super::procs::run;
use super::{LIVE_LABS, PREFIX};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The root namespace's state before the first lab (see [`root_state`]).
pub(super) static ROOT_BEFORE: OnceLock<String> = OnceLock::new();

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

pub(super) fn netns_list() -> Vec<String> {
    let o = run(Command::new("ip").args(["netns", "list"]), Duration::from_secs(10));
    o.stdout.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// Kills what runs in a namespace and deletes it (best effort, for cleanup).
pub(super) fn destroy_netns(ns: &str) {
    let pids = run(Command::new("ip").args(["netns", "pids", ns]), Duration::from_secs(10));
    for pid in pids.stdout.split_whitespace() {
        let _ = run(Command::new("kill").args(["-KILL", pid]), Duration::from_secs(5));
    }
    let _ = run(Command::new("ip").args(["netns", "del", ns]), Duration::from_secs(10));
}

/// What the suite must leave untouched in the root namespace: interfaces,
/// routes, policy rules and the nat tables.
pub(super) fn root_state() -> String {
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

pub(super) fn process_prefix() -> String {
    format!("{PREFIX}-{}-", std::process::id())
}

/// Namespaces of labs whose test process is gone (a run killed before its
/// labs could clean up): delete them so they cannot confuse this run.
pub(super) fn remove_stale_namespaces() {
    for ns in netns_list() {
        let Some(rest) = ns.strip_prefix(&format!("{PREFIX}-")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing namespace {ns} left by an earlier run (process {pid} is gone)");
            destroy_netns(&ns);
        }
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
