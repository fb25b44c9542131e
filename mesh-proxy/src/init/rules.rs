//! The redirect rules `mesh-proxy init` installs, as pure functions over
//! configuration and `iptables-save` text, so every combination is unit
//! tested without touching a kernel.

use mesh_policy::cidr::{Cidr, InvalidCidr};
use std::fmt::Write as _;

/// Chain for inbound redirection (jumped to from `PREROUTING`).
pub const INBOUND_CHAIN: &str = "MESH_INBOUND";
/// Chain for outbound redirection (jumped to from `OUTPUT`).
pub const OUTBOUND_CHAIN: &str = "MESH_OUTPUT";
/// The jump rules, as `iptables-save` prints them.
pub const INBOUND_JUMP: &str = "-A PREROUTING -p tcp -j MESH_INBOUND";
/// See [`INBOUND_JUMP`].
pub const OUTBOUND_JUMP: &str = "-A OUTPUT -p tcp -j MESH_OUTPUT";
/// `multiport` takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

/// What to redirect, and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The proxy's UID: its own connections are never redirected.
    pub proxy_uid: u32,
    /// Where inbound connections go.
    pub inbound_port: u16,
    /// Where outbound connections go.
    pub outbound_port: u16,
    /// Inbound ports left alone (the admin port is always among them).
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub skip_outbound_ports: Vec<u16>,
    /// Inbound source networks left alone.
    pub skip_inbound_cidrs: Vec<String>,
    /// Outbound destination networks left alone.
    pub skip_outbound_cidrs: Vec<String>,
    /// Redirect inbound traffic at all.
    pub inbound: bool,
    /// Redirect outbound traffic at all.
    pub outbound: bool,
}

fn port_lists(ports: &[u16]) -> Vec<String> {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.chunks(MULTIPORT_MAX).map(|c| c.iter().map(u16::to_string).collect::<Vec<_>>().join(",")).collect()
}

/// A `--skip-*-cidrs` value that is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {given:?}: {reason} (expected an address and prefix length, e.g. 10.0.0.0/8 or fd00::/8)")]
pub struct BadCidr {
    /// What was given.
    pub given: String,
    /// Why it is not a CIDR.
    pub reason: InvalidCidr,
}

/// `cidrs` as iptables saves them (host bits cleared, `10.1.2.3/8` is
/// `10.0.0.0/8`; IPv6 in its canonical form), without duplicates, split into
/// (IPv4, IPv6). Comparing raw input with `iptables-save` would see a
/// difference on every run and reinstall.
pub fn normalize_cidrs(cidrs: &[String]) -> Result<(Vec<String>, Vec<String>), BadCidr> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for given in cidrs {
        let c = Cidr::masked(given.trim()).map_err(|reason| BadCidr { given: given.clone(), reason })?;
        let list = if c.addr().is_ipv4() { &mut v4 } else { &mut v6 };
        let text = c.to_string();
        if !list.contains(&text) {
            list.push(text);
        }
    }
    Ok((v4, v6))
}

impl Rules {
    /// The rules for each family, (IPv4, IPv6): the same ports, and each the
    /// networks of its family, normalised as iptables saves them.
    pub fn by_family(&self) -> Result<(Rules, Rules), BadCidr> {
        let (in4, in6) = normalize_cidrs(&self.skip_inbound_cidrs)?;
        let (out4, out6) = normalize_cidrs(&self.skip_outbound_cidrs)?;
        let v4 = Rules { skip_inbound_cidrs: in4, skip_outbound_cidrs: out4, ..self.clone() };
        let v6 = Rules { skip_inbound_cidrs: in6, skip_outbound_cidrs: out6, ..self.clone() };
        Ok((v4, v6))
    }

    /// The chain rules, in order, as `iptables-save` lines.
    pub fn chain_rules(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.inbound {
            for list in port_lists(&self.skip_inbound_ports) {
                out.push(format!("-A {INBOUND_CHAIN} -p tcp -m multiport --dports {list} -j RETURN"));
            }
            for cidr in &self.skip_inbound_cidrs {
                out.push(format!("-A {INBOUND_CHAIN} -s {cidr} -p tcp -j RETURN"));
            }
            out.push(format!("-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}", self.inbound_port));
        }
        if self.outbound {
            out.push(format!("-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN", self.proxy_uid));
            // Loopback: the app talking to itself (or its own pod IP) is not mesh traffic.
            out.push(format!("-A {OUTBOUND_CHAIN} -o lo -j RETURN"));
            for list in port_lists(&self.skip_outbound_ports) {
                out.push(format!("-A {OUTBOUND_CHAIN} -p tcp -m multiport --dports {list} -j RETURN"));
            }
            for cidr in &self.skip_outbound_cidrs {
                out.push(format!("-A {OUTBOUND_CHAIN} -d {cidr} -p tcp -j RETURN"));
            }
            out.push(format!("-A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}", self.outbound_port));
        }
        out
    }

    /// The jump rules that send traffic to the chains.
    pub fn jumps(&self) -> Vec<&'static str> {
        let mut j = Vec::new();
        if self.inbound {
            j.push(INBOUND_JUMP);
        }
        if self.outbound {
            j.push(OUTBOUND_JUMP);
        }
        j
    }

    fn chains(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.inbound {
            c.push(INBOUND_CHAIN);
        }
        if self.outbound {
            c.push(OUTBOUND_CHAIN);
        }
        c
    }

    /// The `iptables-restore --noflush` input that installs everything.
    pub fn install_script(&self) -> String {
        let mut s = String::from("*nat\n");
        for c in self.chains() {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        for r in self.chain_rules() {
            let _ = writeln!(s, "{r}");
        }
        for j in self.jumps() {
            let _ = writeln!(s, "{j}");
        }
        s.push_str("COMMIT\n");
        s
    }

    /// Whether `saved` (`iptables-save` output) already holds exactly these
    /// rules: each of our chains with its rules in this order (a RETURN
    /// after the REDIRECT would be no exemption at all), each jump once.
    pub fn installed_in(&self, saved: &str) -> bool {
        let ours = ours(saved);
        let want = self.chain_rules();
        let in_chain = |rules: &[String], chain: &str| -> Vec<String> {
            rules.iter().filter(|r| rule_chain(r) == chain).cloned().collect()
        };
        let mut want_jumps: Vec<String> = self.jumps().iter().map(|j| j.to_string()).collect();
        let mut have_jumps: Vec<String> = ours.rules.iter().filter(|r| !is_ours(rule_chain(r))).cloned().collect();
        want_jumps.sort();
        have_jumps.sort();
        let mut chains = ours.chains.clone();
        chains.sort_unstable();
        let mut want_chains: Vec<String> = self.chains().iter().map(|c| c.to_string()).collect();
        want_chains.sort_unstable();
        chains == want_chains
            && want_jumps == have_jumps
            && [INBOUND_CHAIN, OUTBOUND_CHAIN].iter().all(|c| in_chain(&want, c) == in_chain(&ours.rules, c))
    }
}

/// The chain a saved `-A CHAIN ...` rule is in.
fn rule_chain(rule: &str) -> &str {
    rule.trim_start_matches("-A ").split_whitespace().next().unwrap_or("")
}

/// What of ours a saved nat table holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ours {
    /// Our chains that exist.
    pub chains: Vec<String>,
    /// Our rules: jumps into our chains and rules inside them.
    pub rules: Vec<String>,
}

fn is_ours(chain: &str) -> bool {
    chain == INBOUND_CHAIN || chain == OUTBOUND_CHAIN
}

/// Our chains and rules in an `iptables-save` nat table.
pub fn ours(saved: &str) -> Ours {
    let mut o = Ours::default();
    for line in nat_lines(saved) {
        if let Some(chain) = line.strip_prefix(':').and_then(|l| l.split_whitespace().next()) {
            if is_ours(chain) {
                o.chains.push(chain.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or("");
            let jumps_to_ours =
                line.split(" -j ").nth(1).is_some_and(|t| is_ours(t.split_whitespace().next().unwrap_or("")));
            if is_ours(chain) || jumps_to_ours {
                o.rules.push(line.to_string());
            }
        }
    }
    o
}

/// The lines of the `*nat` table in `iptables-save` output.
fn nat_lines(saved: &str) -> impl Iterator<Item = &str> {
    let mut in_nat = false;
    saved.lines().map(str::trim).filter(move |l| {
        if l.starts_with('*') {
            in_nat = *l == "*nat";
            return false;
        }
        in_nat && !l.starts_with('#') && *l != "COMMIT"
    })
}

/// The `iptables-restore --noflush` input that removes exactly what we
/// added, or `None` when there is nothing of ours.
pub fn cleanup_script(saved: &str) -> Option<String> {
    let o = ours(saved);
    if o.chains.is_empty() && o.rules.is_empty() {
        return None;
    }
    let mut s = String::from("*nat\n");
    for rule in o.rules.iter().filter(|r| !is_ours(rule_chain(r))) {
        let _ = writeln!(s, "-D{}", &rule[2..]);
    }
    for c in &o.chains {
        let _ = writeln!(s, "-F {c}");
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Chain-name prefixes of other meshes' interception, and whose they are.
const OTHER_MESHES: [(&str, &str); 5] =
    [("ISTIO_", "Istio"), ("PROXY_INIT_", "Linkerd"), ("KUMA_", "Kuma"), ("CONSUL_", "Consul"), ("CILIUM_", "Cilium")];

fn other_mesh(chain: &str) -> Option<&'static str> {
    OTHER_MESHES.iter().find(|(prefix, _)| chain.starts_with(prefix)).map(|(_, mesh)| *mesh)
}

/// Something in the tables that would fight our rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The table it is in.
    pub table: String,
    /// Whose it is: a mesh's name, or "unknown" for a bare REDIRECT/DNAT.
    pub owner: &'static str,
    /// The chain (`chain ISTIO_OUTPUT`) or rule (`-A OUTPUT ... -j DNAT ...`).
    pub what: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.owner {
            "unknown" => write!(f, "a redirect not installed by mesh-proxy: {} (table {})", self.what, self.table),
            mesh => write!(f, "{mesh}'s {} (table {})", self.what, self.table),
        }
    }
}

/// What of other interception schemes `saved` (`iptables-save` output, all
/// tables) holds: any chain of another mesh (declared, even with no jump to
/// it yet: its init is half done or half undone), jumps to such chains, and
/// REDIRECT or DNAT rules in nat `PREROUTING`/`OUTPUT` that are not ours.
pub fn conflicts(saved: &str) -> Vec<Conflict> {
    let mut found = Vec::new();
    let mut table = String::new();
    for line in saved.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        if let Some(chain) = line.strip_prefix(':').and_then(|l| l.split_whitespace().next()) {
            if let Some(owner) = other_mesh(chain) {
                found.push(Conflict { table: table.clone(), owner, what: format!("chain {chain}") });
            }
            continue;
        }
        if !line.starts_with("-A ") {
            continue;
        }
        let chain = rule_chain(line);
        let target = line.split(" -j ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or("");
        if other_mesh(chain).is_some() || is_ours(chain) {
            continue; // its chain is reported once; ours is ours
        }
        let owner = other_mesh(target).or_else(|| {
            let hijacks = table == "nat"
                && (chain == "PREROUTING" || chain == "OUTPUT")
                && (target == "REDIRECT" || target == "DNAT");
            hijacks.then_some("unknown")
        });
        if let Some(owner) = owner {
            found.push(Conflict { table: table.clone(), owner, what: line.to_string() });
        }
    }
    found
}

#[cfg(test)]
mod tests;
