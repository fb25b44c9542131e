//! Inbound authorization, compiled: who may reach a workload's port, and,
//! for HTTP, which requests.

use super::matcher::{self, InvalidPolicy, Match};
use http::request::Parts;
use mesh_proto::policy as pb;
use std::net::IpAddr;

/// What the inbound side knows about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's SPIFFE ID, when it authenticated with mTLS.
    pub identity: Option<String>,
    /// The client's address.
    pub ip: IpAddr,
}

/// What happens when no authorization matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Allowed for mTLS clients only.
    Authenticated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Self, InvalidPolicy> {
        let bad = || InvalidPolicy(format!("network {s:?}"));
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > if net.is_ipv4() { 32 } else { 128 } {
            return Err(bad());
        }
        Ok(Self { net, len })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// One compiled authorization.
#[derive(Debug, Clone)]
pub struct Authorization {
    /// Its name.
    pub name: String,
    identities: Vec<String>,
    namespaces: Vec<String>,
    networks: Vec<Cidr>,
    http: Vec<Match>,
}

impl Authorization {
    fn client_allowed(&self, c: &Client) -> bool {
        let by_identity = c.identity.as_deref().is_some_and(|id| {
            self.identities.iter().any(|i| i == id)
                || id
                    .parse::<mesh_identity::SpiffeId>()
                    .is_ok_and(|s| self.namespaces.iter().any(|n| n == s.namespace()))
        });
        // Networks authorize unauthenticated clients by address.
        by_identity || self.networks.iter().any(|n| n.contains(c.ip))
    }
}

/// A port's compiled inbound policy.
#[derive(Debug, Clone)]
pub struct InboundPolicy {
    /// The policy's name ("default" when none selects the port).
    pub name: String,
    /// What happens when no authorization matches.
    pub default: DefaultAction,
    authorizations: Vec<Authorization>,
    /// Only mTLS clients may connect at all.
    pub require_mtls: bool,
    /// No answer from the control plane yet: everything is denied (fail closed).
    pub pending: bool,
}

impl InboundPolicy {
    /// The placeholder until the control plane's first answer (denies everything).
    pub fn pending() -> Self {
        Self { name: "pending".into(), pending: true, ..Self::default() }
    }

    /// Whether this is the placeholder.
    pub fn is_pending(&self) -> bool {
        self.pending
    }
}

impl Default for InboundPolicy {
    fn default() -> Self {
        Self {
            name: "default".into(),
            default: DefaultAction::Allow,
            authorizations: Vec::new(),
            require_mtls: false,
            pending: false,
        }
    }
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed or not.
    pub allowed: bool,
    /// The policy that decided.
    pub policy: String,
    /// The authorization that allowed, or `default:<action>`.
    pub rule: String,
}

impl InboundPolicy {
    /// Compiles a wire policy.
    pub fn compile(p: &pb::InboundPolicy) -> Result<Self, InvalidPolicy> {
        let default = match pb::DefaultAction::try_from(p.default).unwrap_or(pb::DefaultAction::Unspecified) {
            pb::DefaultAction::Deny => DefaultAction::Deny,
            pb::DefaultAction::Authenticated => DefaultAction::Authenticated,
            pb::DefaultAction::Allow | pb::DefaultAction::Unspecified => DefaultAction::Allow,
        };
        let authorizations = p
            .authorizations
            .iter()
            .map(|a| {
                Ok(Authorization {
                    name: a.name.clone(),
                    identities: a.identities.clone(),
                    namespaces: a.namespaces.clone(),
                    networks: a.networks.iter().map(|n| Cidr::parse(n)).collect::<Result<_, _>>()?,
                    http: a.http.iter().map(Match::compile).collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<_, InvalidPolicy>>()?;
        let name = if p.name.is_empty() { "default".to_string() } else { p.name.clone() };
        Ok(Self { name, default, authorizations, require_mtls: p.require_mtls, pending: false })
    }

    /// Decides for a client, and for HTTP its request. A connection-level
    /// check (`req` = `None`) only counts authorizations without HTTP matches.
    pub fn authorize(&self, client: &Client, req: Option<&Parts>) -> Verdict {
        let verdict = |allowed: bool, rule: String| Verdict { allowed, policy: self.name.clone(), rule };
        if self.pending {
            return verdict(false, "control-plane-unavailable".into());
        }
        if self.require_mtls && client.identity.is_none() {
            return verdict(false, "require-mtls".into());
        }
        for a in &self.authorizations {
            let request_ok = match req {
                Some(r) => matcher::any(&a.http, r),
                None => a.http.is_empty(),
            };
            if request_ok && a.client_allowed(client) {
                return verdict(true, a.name.clone());
            }
        }
        match self.default {
            DefaultAction::Allow => verdict(true, "default:allow".into()),
            DefaultAction::Deny => verdict(false, "default:deny".into()),
            DefaultAction::Authenticated => verdict(client.identity.is_some(), "default:authenticated".into()),
        }
    }

    /// Whether any authorization looks at HTTP requests (then TCP-level
    /// checks cannot decide alone).
    pub fn has_http_rules(&self) -> bool {
        self.authorizations.iter().any(|a| !a.http.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(default: pb::DefaultAction, auths: Vec<pb::Authorization>) -> InboundPolicy {
        InboundPolicy::compile(&pb::InboundPolicy {
            name: "books-authz".into(),
            default: default as i32,
            authorizations: auths,
            require_mtls: false,
        })
        .expect("compiles")
    }

    fn client(id: Option<&str>, ip: &str) -> Client {
        Client { identity: id.map(str::to_string), ip: ip.parse().expect("ip") }
    }

    #[test]
    fn identities_namespaces_networks_and_defaults() {
        let p = policy(
            pb::DefaultAction::Deny,
            vec![
                pb::Authorization {
                    name: "web".into(),
                    identities: vec!["spiffe://m/ns/default/sa/web".into()],
                    ..Default::default()
                },
                pb::Authorization { name: "shop".into(), namespaces: vec!["shop".into()], ..Default::default() },
                pb::Authorization { name: "lan".into(), networks: vec!["10.1.0.0/16".into()], ..Default::default() },
            ],
        );
        let ok = |c: &Client| p.authorize(c, None);
        assert_eq!(ok(&client(Some("spiffe://m/ns/default/sa/web"), "1.2.3.4")).rule, "web");
        assert!(ok(&client(Some("spiffe://m/ns/shop/sa/cart"), "1.2.3.4")).allowed);
        assert!(ok(&client(None, "10.1.2.3")).allowed);
        assert!(ok(&client(None, "::ffff:10.1.2.3")).allowed, "mapped IPv4");
        let denied = ok(&client(Some("spiffe://m/ns/default/sa/evil"), "10.2.0.1"));
        assert_eq!(
            (denied.allowed, denied.rule.as_str(), denied.policy.as_str()),
            (false, "default:deny", "books-authz")
        );
        let authn = policy(pb::DefaultAction::Authenticated, vec![]);
        assert!(authn.authorize(&client(Some("spiffe://m/ns/x/sa/y"), "1.1.1.1"), None).allowed);
        assert!(!authn.authorize(&client(None, "1.1.1.1"), None).allowed);
    }

    #[test]
    fn fails_closed_until_the_control_plane_answers() {
        let v = InboundPolicy::pending().authorize(&client(Some("spiffe://m/ns/a/sa/b"), "1.1.1.1"), None);
        assert_eq!((v.allowed, v.rule.as_str()), (false, "control-plane-unavailable"));
        assert!(InboundPolicy::default().authorize(&client(None, "1.1.1.1"), None).allowed, "no control plane: allow");
    }

    #[test]
    fn http_rules_apply_per_request() {
        let admin_get = pb::Match {
            path: Some(pb::PathMatch { kind: Some(pb::path_match::Kind::Prefix("/admin".into())) }),
            method: "GET".into(),
            ..Default::default()
        };
        let p = policy(
            pb::DefaultAction::Deny,
            vec![pb::Authorization {
                name: "ops-read-admin".into(),
                namespaces: vec!["ops".into()],
                http: vec![admin_get],
                ..Default::default()
            }],
        );
        let ops = client(Some("spiffe://m/ns/ops/sa/a"), "1.1.1.1");
        let req = |m: &str, u: &str| http::Request::builder().method(m).uri(u).body(()).expect("req").into_parts().0;
        assert!(p.authorize(&ops, Some(&req("GET", "/admin/x"))).allowed);
        assert!(!p.authorize(&ops, Some(&req("POST", "/admin/x"))).allowed);
        assert!(!p.authorize(&ops, None).allowed, "HTTP-only rules do not open TCP");
        assert!(p.has_http_rules());
    }
}
