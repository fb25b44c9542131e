//! The redirect rules `mesh-proxy init` installs, as pure functions over
//! configuration and `iptables-save` text, so every combination is unit
//! tested without touching a kernel.

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

impl Rules {
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

    /// Whether `saved` (the nat table from `iptables-save`) already holds
    /// exactly these rules, each jump once.
    pub fn installed_in(&self, saved: &str) -> bool {
        let ours = ours(saved);
        let mut want: Vec<String> = self.chain_rules();
        want.extend(self.jumps().iter().map(|j| j.to_string()));
        let mut have: Vec<String> = ours.rules;
        want.sort();
        have.sort();
        want == have && ours.chains.len() == self.chains().len()
    }
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
    for rule in o.rules.iter().filter(|r| !is_ours(r.trim_start_matches("-A ").split_whitespace().next().unwrap_or("")))
    {
        let _ = writeln!(s, "-D{}", &rule[2..]);
    }
    for c in &o.chains {
        let _ = writeln!(s, "-F {c}");
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Rules of other interception schemes that would fight ours: redirects or
/// DNATs in `PREROUTING`/`OUTPUT`, or jumps to other meshes' chains.
pub fn conflicts(saved: &str) -> Vec<String> {
    const OTHER_MESHES: [&str; 4] = ["ISTIO_", "PROXY_INIT_", "KUMA_", "CILIUM_"];
    nat_lines(saved)
        .filter(|l| l.starts_with("-A PREROUTING ") || l.starts_with("-A OUTPUT "))
        .filter(|l| {
            let target = l.split(" -j ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or("");
            !is_ours(target)
                && (target == "REDIRECT" || target == "DNAT" || OTHER_MESHES.iter().any(|p| target.starts_with(p)))
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests;
