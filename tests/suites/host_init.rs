//! `mesh-proxy init` on real iptables: each test runs the real binary in a
//! fresh dual-stack network namespace (a lab pod: IPv4 and IPv6 on a
//! bridge) and compares what `iptables-save` and `ip6tables-save` print
//! before and after.
//!
//! Needs root and iptables/iproute2, like `host_e2e` (whose lab it uses):
//! elsewhere each test reports itself skipped and passes, except with
//! `CI=true`, where a skip fails.

#![allow(clippy::unwrap_used)]

use mesh_tests::netns::{Lab, Output};
use std::fs;
use std::time::Duration;

const TEST_APP: &str = env!("CARGO_BIN_EXE_mesh-test-app");

/// A lab with one pod, `p`, and no control plane.
fn pod_lab(name: &str) -> Option<Lab> {
    let mut lab = Lab::start_or_skip(name, TEST_APP)?;
    lab.add_pod("p");
    Some(lab)
}

/// Runs a command in pod `p`, panicking unless it succeeds.
fn sh(lab: &Lab, argv: &[&str]) -> String {
    let o = lab.exec("p", argv, Duration::from_secs(20));
    assert!(o.success(), "`{}` failed: {o}", argv.join(" "));
    o.stdout
}

/// Both families' tables, as `-save` prints them, without the `#` lines
/// (they carry a timestamp) and, unless `counters`, without the `[n:m]`
/// packet and byte counters.
fn tables(lab: &Lab, counters: bool) -> String {
    let mut out = String::new();
    for save in ["iptables-save", "ip6tables-save"] {
        let argv: &[&str] = if counters { &[save, "-c"] } else { &[save] };
        out.push_str(&format!("## {save}\n"));
        for line in sh(lab, argv).lines().filter(|l| !l.starts_with('#')) {
            out.push_str(&if counters { line.to_string() } else { strip_counters(line) });
            out.push('\n');
        }
    }
    out
}

/// `line` without `[n:m]` counters (on chain lines, and leading rules with `-c`).
fn strip_counters(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']').map(|c| open + c);
        let inner = close.map(|c| &rest[open + 1..c]);
        match (close, inner) {
            (Some(c), Some(inner))
                if inner.split(':').all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
            {
                out.push_str(rest[..open].trim_end());
                rest = &rest[c + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// The lines of one table of one family in [`tables`] output.
fn table<'a>(all: &'a str, save: &str, name: &str) -> Vec<&'a str> {
    let family = all.split("## ").find(|s| s.starts_with(save)).unwrap_or("");
    let mut inside = false;
    family
        .lines()
        .filter(|l| {
            if let Some(t) = l.strip_prefix('*') {
                inside = t == name;
                return false;
            }
            inside && *l != "COMMIT"
        })
        .collect()
}

fn init(lab: &Lab, args: &[&str]) -> Output {
    lab.init_pod("p", args)
}

/// Some of a user's own rules and chains, in nat and filter, both families.
fn add_user_rules(lab: &Lab) {
    for (ipt, net, masq) in [("iptables", "192.168.0.0/16", "10.77.0.0/24"), ("ip6tables", "fd99::/16", "fd00:77::/64")]
    {
        for argv in [
            &[ipt, "-t", "nat", "-N", "USER_NAT"][..],
            &[ipt, "-t", "nat", "-A", "OUTPUT", "-d", net, "-j", "USER_NAT"],
            &[ipt, "-t", "nat", "-A", "USER_NAT", "-p", "udp", "-j", "RETURN"],
            &[ipt, "-t", "nat", "-A", "POSTROUTING", "-s", masq, "-j", "MASQUERADE"],
            &[ipt, "-N", "USER_FILTER"],
            &[ipt, "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "USER_FILTER"],
            &[ipt, "-A", "USER_FILTER", "-j", "ACCEPT"],
        ] {
            sh(lab, argv);
        }
    }
}

// ---------------------------------------------------------------------------

/// Init twice, with networks iptables normalises (`10.1.2.3/8` is saved as
/// `10.0.0.0/8`, `fd12::1/16` as `fd12::/16`): the second run reports both
/// families already installed and changes nothing, counters included (a
/// reinstall would zero them), in both families. Catches comparing CIDRs as
/// given (every run reinstalls), an install check that misses IPv6, and
/// ip6tables rules that differ from the IPv4 ones.
#[test]
fn init_twice_changes_nothing_even_with_cidrs_iptables_normalises() {
    let Some(lab) = pod_lab("twice") else { return };
    let args = ["--skip-outbound-cidrs", "10.1.2.3/8,fd12::1/16", "--skip-outbound-ports", "5432"];
    let first = init(&lab, &args);
    assert!(first.success(), "{first}");
    assert!(first.stdout.contains("IPv4: inbound") && first.stdout.contains("IPv6: inbound"), "{first}");
    let after_first = tables(&lab, false);
    let nat4 = table(&after_first, "iptables-save", "nat");
    let nat6 = table(&after_first, "ip6tables-save", "nat");
    assert!(nat4.contains(&"-A MESH_OUTPUT -d 10.0.0.0/8 -p tcp -j RETURN"), "{after_first}");
    assert!(nat6.contains(&"-A MESH_OUTPUT -d fd12::/16 -p tcp -j RETURN"), "{after_first}");
    // The same redirect semantics in both families: only the network differs.
    let mesh = |nat: &[&str], net: &str| -> Vec<String> {
        nat.iter().filter(|l| l.contains("MESH_")).map(|l| l.replace(net, "NET")).collect()
    };
    let (m4, m6) = (mesh(&nat4, "10.0.0.0/8"), mesh(&nat6, "fd12::/16"));
    assert!(m4.iter().any(|l| l.contains("REDIRECT --to-ports 4140")), "{after_first}");
    assert_eq!(m4, m6, "IPv4 and IPv6 rules differ:\n{after_first}");

    // Traffic through the rules, so that a reinstall would show in the counters.
    for url in ["http://10.1.2.3:9/", "http://[fd12::5]:9/", "http://10.77.0.1:9/"] {
        let _ = lab.curl("p", &["-g", "--max-time", "1", url]);
    }
    let counted = tables(&lab, true);
    assert!(
        counted.lines().any(|l| l.starts_with("[1:") && l.contains("-d fd12::/16")),
        "the IPv6 exemption counted no packet:\n{counted}"
    );

    let second = init(&lab, &args);
    assert!(second.success(), "{second}");
    for family in ["IPv4", "IPv6"] {
        assert!(second.stdout.contains(&format!("{family}: rules already installed")), "{second}");
    }
    assert_eq!(tables(&lab, true), counted, "the second init changed the tables");
    lab.finish();
}

/// User rules and chains in nat and filter (both families) before init;
/// init, then init with another port (which replaces our rules), then
/// `--cleanup`: the tables are exactly as before init, and a second cleanup
/// finds nothing. Catches a cleanup that leaves a jump or chain of ours, or
/// removes (or reorders) a user's rule, and one that forgets IPv6.
#[test]
fn cleanup_restores_exactly_the_state_before_init() {
    let Some(lab) = pod_lab("cleanup") else { return };
    add_user_rules(&lab);
    let before = tables(&lab, false);
    assert!(before.contains("USER_NAT") && before.contains("USER_FILTER"), "{before}");

    let o = init(&lab, &["--skip-inbound-cidrs", "10.9.9.9/16"]);
    assert!(o.success(), "{o}");
    let o = init(&lab, &["--outbound-port", "5000"]);
    assert!(o.success() && !o.stdout.contains("already installed"), "{o}");
    let installed = tables(&lab, false);
    for save in ["iptables-save", "ip6tables-save"] {
        let nat = table(&installed, save, "nat");
        assert!(nat.contains(&"-A MESH_OUTPUT -p tcp -j REDIRECT --to-ports 5000"), "{installed}");
        assert!(!nat.iter().any(|l| l.contains("4140") || l.contains("10.9.0.0")), "old rules left:\n{installed}");
        assert_eq!(nat.iter().filter(|l| l.contains("-j MESH_OUTPUT")).count(), 1, "{installed}");
    }

    let o = init(&lab, &["--cleanup"]);
    assert!(o.success() && o.stdout.contains("IPv4: mesh rules removed"), "{o}");
    assert!(o.stdout.contains("IPv6: mesh rules removed"), "{o}");
    assert_eq!(tables(&lab, false), before, "cleanup did not restore the tables");
    let o = init(&lab, &["--cleanup"]);
    assert!(o.success() && o.stdout.contains("IPv4: no mesh rules installed"), "{o}");
    assert_eq!(tables(&lab, false), before);
    lab.finish();
}

/// Another mesh's chains present (Istio's, Linkerd's; declared only, or
/// jumped to; IPv4 or only IPv6): init fails naming the mesh and chain and
/// what to do, and changes nothing in either family. Catches a conflict
/// check that only looks at jumps, that runs after the IPv4 rules went in
/// (an IPv6-only conflict would leave IPv4 half done), or a vague error.
#[test]
fn another_meshs_chains_are_refused_and_nothing_changes() {
    let Some(lab) = pod_lab("conflict") else { return };
    add_user_rules(&lab);
    let cases: [(&str, &str, &str, bool); 6] = [
        ("iptables", "ISTIO_OUTPUT", "Istio", true),
        ("iptables", "ISTIO_INBOUND", "Istio", false),
        ("iptables", "ISTIO_REDIRECT", "Istio", false),
        ("iptables", "PROXY_INIT_OUTPUT", "Linkerd", true),
        ("iptables", "PROXY_INIT_REDIRECT", "Linkerd", false),
        ("ip6tables", "ISTIO_OUTPUT", "Istio", true),
    ];
    for (ipt, chain, mesh, jump) in cases {
        sh(&lab, &[ipt, "-t", "nat", "-N", chain]);
        if jump {
            sh(&lab, &[ipt, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", chain]);
        }
        let before = tables(&lab, false);
        let o = init(&lab, &[]);
        assert!(!o.success(), "init with {ipt} {chain} present succeeded: {o}");
        let family = if ipt == "ip6tables" { "IPv6" } else { "IPv4" };
        for needed in [&format!("{family}: {mesh}'s chain {chain} (table nat)")[..], "changed nothing", "-X CHAIN"] {
            assert!(o.stderr.contains(needed), "the error lacks {needed:?}: {o}");
        }
        assert_eq!(tables(&lab, false), before, "a refused init changed the tables ({ipt} {chain})");
        if jump {
            sh(&lab, &[ipt, "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", chain]);
        }
        sh(&lab, &[ipt, "-t", "nat", "-X", chain]);
    }
    let o = init(&lab, &[]);
    assert!(o.success(), "with the other mesh gone init must work: {o}");
    lab.finish();
}

/// ip6tables missing (a PATH with only the IPv4 tools): with IPv6 addresses
/// in the namespace init refuses, naming the addresses and `--ipv6 off`,
/// and installs nothing; `--ipv6 off` installs IPv4 only; with no IPv6
/// address beyond loopback and link-local, init says IPv6 was skipped.
/// Catches silently intercepting IPv4 only (IPv6 connections would bypass
/// the proxy) and an error that does not say what to do.
#[test]
fn without_ip6tables_init_refuses_where_ipv6_would_bypass_the_proxy() {
    let Some(lab) = pod_lab("noip6t") else { return };
    let bin = lab.dir().join("ipv4-only-bin");
    fs::create_dir(&bin).unwrap();
    let mut linked = 0;
    for entry in fs::read_dir("/usr/sbin").unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("iptables") || name.starts_with("xtables") {
            std::os::unix::fs::symlink(format!("/usr/sbin/{name}"), bin.join(&name)).unwrap();
            linked += 1;
        }
    }
    assert!(linked >= 3, "no iptables tools in /usr/sbin");
    let path = format!("PATH={}", bin.display());
    let proxy = lab.proxy_binary();
    let run = |args: &[&str]| {
        let mut argv = vec!["env", &path, &proxy, "init"];
        argv.extend_from_slice(args);
        lab.exec("p", &argv, Duration::from_secs(30))
    };

    let before = tables(&lab, false);
    let o = run(&[]);
    let ip6 = lab.pod("p").ip6.to_string();
    assert!(!o.success(), "init without ip6tables in a dual-stack namespace succeeded: {o}");
    for needed in [&ip6[..], "bypass", "--ipv6 off", "ip6tables"] {
        assert!(o.stderr.contains(needed), "the error lacks {needed:?}: {o}");
    }
    assert_eq!(tables(&lab, false), before, "a refused init changed the tables");

    let o = run(&["--ipv6", "off"]);
    assert!(o.success() && o.stdout.contains("IPv4: inbound") && !o.stdout.contains("IPv6"), "{o}");
    let installed = tables(&lab, false);
    assert!(table(&installed, "iptables-save", "nat").iter().any(|l| l.contains("MESH_OUTPUT")), "{installed}");
    assert!(!table(&installed, "ip6tables-save", "nat").iter().any(|l| l.contains("MESH_")), "{installed}");

    // Only loopback and link-local IPv6 left: nothing to bypass with.
    sh(&lab, &["ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global"]);
    let o = run(&[]);
    assert!(o.success() && o.stdout.contains("IPv6: skipped") && o.stdout.contains("already installed"), "{o}");
    lab.finish();
}

/// The suite's own helper: counters go, everything else stays.
#[test]
fn counters_are_stripped_and_nothing_else() {
    assert_eq!(strip_counters(":OUTPUT ACCEPT [12:345]"), ":OUTPUT ACCEPT");
    assert_eq!(strip_counters("[3:180] -A OUTPUT -j X"), "-A OUTPUT -j X");
    assert_eq!(strip_counters("-A X -m comment --comment \"[a:b]\""), "-A X -m comment --comment \"[a:b]\"");
}

/// A namespace with IPv6 switched off: init installs IPv4 rules only (no
/// ip6tables table appears), and the proxy starts with its dual-stack
/// defaults, skipping the `[::1]:4140` listener it cannot have while
/// keeping `127.0.0.1:4140` and the inbound port. Catches a default that
/// fails to start without IPv6 and an init that configures ip6tables
/// regardless.
#[test]
fn ipv4_only_namespace_gets_ipv4_rules_and_a_proxy_that_starts() {
    let Some(mut lab) = pod_lab("v4only") else { return };
    for conf in ["all", "default", "lo", "eth0"] {
        sh(&lab, &["sysctl", "-q", "-w", &format!("net.ipv6.conf.{conf}.disable_ipv6=1")]);
    }
    assert_eq!(sh(&lab, &["cat", "/proc/net/if_inet6"]).trim(), "", "IPv6 is still on");
    let o = init(&lab, &[]);
    assert!(o.success() && o.stdout.contains("IPv4: inbound") && !o.stdout.contains("IPv6"), "{o}");
    let t = tables(&lab, false);
    assert!(!table(&t, "ip6tables-save", "nat").iter().any(|l| l.contains("MESH_")), "{t}");

    let proxy = lab.proxy_binary();
    let id = lab.spawn("p", "proxy", &[&proxy, "--transparent", "--admin-addr", "127.0.0.1:4191"]);
    lab.wait_output(id, "transparent outbound is IPv4 only", Duration::from_secs(10));
    lab.wait_output(id, "proxy serving", Duration::from_secs(10));
    let listening = sh(&lab, &["ss", "-Hltn"]);
    for addr in ["127.0.0.1:4140", ":4143"] {
        assert!(listening.contains(addr), "nothing listens on {addr}:\n{listening}");
    }
    assert!(lab.exited(id).is_none(), "{}", lab.logs(id));
    lab.finish();
}
