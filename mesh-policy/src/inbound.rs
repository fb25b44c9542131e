//! Inbound authorization, compiled: who may reach a workload's port, and,
//! for HTTP, which requests.

use crate::cidr::Cidr;
use crate::matcher::{self, InvalidPolicy, Match};
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
    /// The control plane sent no action, or one this proxy does not know
    /// (version skew): denied, as `default:unrecognized` (fail closed).
    Unrecognized(i32),
}

impl DefaultAction {
    /// The wire value, with anything unspecified or unknown failing closed.
    pub fn from_wire(value: i32) -> Self {
        match pb::DefaultAction::try_from(value) {
            Ok(pb::DefaultAction::Allow) => DefaultAction::Allow,
            Ok(pb::DefaultAction::Deny) => DefaultAction::Deny,
            Ok(pb::DefaultAction::Authenticated) => DefaultAction::Authenticated,
            Ok(pb::DefaultAction::Unspecified) | Err(_) => DefaultAction::Unrecognized(value),
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
    /// Clients are named by identity (see the Policy API's `authenticated`).
    authenticated: bool,
    networks: Vec<Cidr>,
    http: Vec<Match>,
}

impl Authorization {
    /// Whether the client meets every kind of criterion the rule lists:
    /// "who" (its identity is listed, or its namespace is) and "where" (its
    /// address is in a listed network). A networks-only rule admits
    /// unauthenticated clients by address; a rule listing nothing admits
    /// nobody.
    fn client_allowed(&self, c: &Client) -> bool {
        let who_listed = self.authenticated || !self.identities.is_empty() || !self.namespaces.is_empty();
        let where_listed = !self.networks.is_empty();
        if !who_listed && !where_listed {
            return false;
        }
        let who = !who_listed
            || c.identity.as_deref().is_some_and(|id| {
                self.identities.iter().any(|i| i == id)
                    || id
                        .parse::<mesh_identity::SpiffeId>()
                        .is_ok_and(|s| self.namespaces.iter().any(|n| n == s.namespace()))
            });
        let at = !where_listed || self.networks.iter().any(|n| n.contains(c.ip));
        who && at
    }
}

impl Authorization {
    /// What the rule requires of a client, in words (`meshctl policy
    /// explain` shows it): every listed kind of criterion must hold.
    pub fn describe(&self) -> String {
        let mut who = Vec::new();
        if !self.identities.is_empty() {
            who.push(format!("identity is one of {}", self.identities.join(", ")));
        }
        if !self.namespaces.is_empty() {
            who.push(format!("namespace is one of {}", self.namespaces.join(", ")));
        }
        let mut all = Vec::new();
        match (who.is_empty(), self.authenticated) {
            (false, _) => all.push(format!("an mTLS client whose {}", who.join(" or "))),
            (true, true) => all.push("an mTLS identity the mesh could not name (none can match)".to_string()),
            (true, false) => {}
        }
        if !self.networks.is_empty() {
            let nets: Vec<String> = self.networks.iter().map(ToString::to_string).collect();
            all.push(format!("address in {}", nets.join(", ")));
        }
        if all.is_empty() {
            return "nothing it could match: admits nobody".into();
        }
        let mut text = all.join(" AND ");
        if !self.http.is_empty() {
            text.push_str(" (HTTP requests it matches only)");
        }
        text
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
    /// The placeholder until the control plane's first answer: denies
    /// everything (fail closed).
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

/// An authorization decision, borrowing its names from the policy (the
/// proxy decides every request: no allocation for the common answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'a> {
    /// Allowed or not.
    pub allowed: bool,
    /// The policy that decided.
    pub policy: &'a str,
    /// The authorization that allowed, or `default:<action>`.
    pub rule: &'a str,
}

impl InboundPolicy {
    /// Compiles a wire policy.
    pub fn compile(p: &pb::InboundPolicy) -> Result<Self, InvalidPolicy> {
        let default = DefaultAction::from_wire(p.default);
        if let DefaultAction::Unrecognized(value) = default {
            tracing::warn!(
                policy = %p.name,
                value,
                "inbound policy has no default action this proxy knows: clients no rule allows are denied"
            );
        }
        let authorizations = p
            .authorizations
            .iter()
            .map(|a| {
                Ok(Authorization {
                    name: a.name.clone(),
                    identities: a.identities.clone(),
                    namespaces: a.namespaces.clone(),
                    authenticated: a.authenticated,
                    networks: a
                        .networks
                        .iter()
                        .map(|n| n.parse::<Cidr>().map_err(|e| InvalidPolicy(format!("network {n:?}: {e}"))))
                        .collect::<Result<_, _>>()?,
                    http: a.http.iter().map(Match::compile).collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<_, InvalidPolicy>>()?;
        let name = if p.name.is_empty() { "default".to_string() } else { p.name.clone() };
        Ok(Self { name, default, authorizations, require_mtls: p.require_mtls, pending: false })
    }

    /// Decides for a client, and for HTTP its request. A connection-level
    /// check (`req` = `None`) only counts authorizations without HTTP matches.
    pub fn authorize(&self, client: &Client, req: Option<&Parts>) -> Verdict<'_> {
        let verdict = |allowed: bool, rule| Verdict { allowed, policy: &self.name, rule };
        if self.pending {
            return verdict(false, "control-plane-unavailable");
        }
        if self.require_mtls && client.identity.is_none() {
            return verdict(false, "require-mtls");
        }
        for a in &self.authorizations {
            let request_ok = match req {
                Some(r) => matcher::any(&a.http, r),
                None => a.http.is_empty(),
            };
            if request_ok && a.client_allowed(client) {
                return verdict(true, &a.name);
            }
        }
        match self.default {
            DefaultAction::Allow => verdict(true, "default:allow"),
            DefaultAction::Deny => verdict(false, "default:deny"),
            DefaultAction::Authenticated => verdict(client.identity.is_some(), "default:authenticated"),
            DefaultAction::Unrecognized(_) => verdict(false, "default:unrecognized"),
        }
    }

    /// The policy's rules, in order.
    pub fn authorizations(&self) -> &[Authorization] {
        &self.authorizations
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
        assert_eq!((denied.allowed, denied.rule, denied.policy), (false, "default:deny", "books-authz"));
        let authn = policy(pb::DefaultAction::Authenticated, vec![]);
        assert!(authn.authorize(&client(Some("spiffe://m/ns/x/sa/y"), "1.1.1.1"), None).allowed);
        assert!(!authn.authorize(&client(None, "1.1.1.1"), None).allowed);
    }

    #[test]
    fn fails_closed_until_the_control_plane_answers() {
        let pending = InboundPolicy::pending();
        let v = pending.authorize(&client(Some("spiffe://m/ns/a/sa/b"), "1.1.1.1"), None);
        assert_eq!((v.allowed, v.rule), (false, "control-plane-unavailable"));
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

    #[test]
    fn a_rule_requires_every_kind_of_criterion_it_lists() {
        let web = "spiffe://m/ns/default/sa/web";
        let p = policy(
            pb::DefaultAction::Deny,
            vec![pb::Authorization {
                name: "web-from-lan".into(),
                identities: vec![web.into()],
                networks: vec!["10.1.0.0/16".into()],
                authenticated: true,
                ..Default::default()
            }],
        );
        assert!(p.authorize(&client(Some(web), "10.1.2.3"), None).allowed, "both hold");
        let elsewhere = p.authorize(&client(Some(web), "10.2.0.1"), None);
        assert_eq!((elsewhere.allowed, elsewhere.rule), (false, "default:deny"), "identity alone");
        assert!(!p.authorize(&client(None, "10.1.2.3"), None).allowed, "network alone");
        assert!(!p.authorize(&client(Some("spiffe://m/ns/default/sa/evil"), "10.1.2.3"), None).allowed);
        let rule = &p.authorizations()[0];
        assert_eq!(
            rule.describe(),
            "an mTLS client whose identity is one of spiffe://m/ns/default/sa/web AND address in 10.1.0.0/16"
        );
    }

    #[test]
    fn a_rule_naming_clients_it_cannot_resolve_admits_nobody() {
        // Service accounts in a mesh without identity reach the proxy as
        // `authenticated` with no identities: nobody may pass by address.
        let p = policy(
            pb::DefaultAction::Deny,
            vec![pb::Authorization {
                name: "sa-from-lan".into(),
                networks: vec!["10.1.0.0/16".into()],
                authenticated: true,
                ..Default::default()
            }],
        );
        assert!(!p.authorize(&client(None, "10.1.2.3"), None).allowed);
        let empty =
            policy(pb::DefaultAction::Deny, vec![pb::Authorization { name: "nothing".into(), ..Default::default() }]);
        assert!(!empty.authorize(&client(Some("spiffe://m/ns/a/sa/b"), "10.1.2.3"), None).allowed);
        assert_eq!(empty.authorizations()[0].describe(), "nothing it could match: admits nobody");
    }

    #[test]
    fn an_unspecified_or_unknown_default_denies() {
        for value in [pb::DefaultAction::Unspecified as i32, 42] {
            let p = InboundPolicy::compile(&pb::InboundPolicy {
                name: "skewed".into(),
                default: value,
                authorizations: vec![],
                require_mtls: false,
            })
            .expect("compiles");
            assert_eq!(p.default, DefaultAction::Unrecognized(value));
            let v = p.authorize(&client(Some("spiffe://m/ns/a/sa/b"), "10.1.2.3"), None);
            assert_eq!((v.allowed, v.rule), (false, "default:unrecognized"), "value {value}");
        }
    }
}
