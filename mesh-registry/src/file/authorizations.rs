//! The `authorizations` section: inbound authorization policies, one per
//! workload port.

use super::check::{Checker, PolicyHead, PolicyKind, RawHead};
use super::matches::RawMatch;
use super::text::{dns_label_error, quote, to_u32};
use mesh_identity::spiffe::SpiffeId;
use mesh_policy::cidr::Cidr;
use mesh_policy::model::{AuthorizationPolicy, AuthorizationRule, DefaultAction, ServiceAccountRef};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawAuthorization {
    name: Spanned<String>,
    #[serde(default)]
    namespace: Option<Spanned<String>>,
    service: Spanned<String>,
    #[serde(default)]
    port: Option<Spanned<i64>>,
    #[serde(default)]
    default: Option<Spanned<String>>,
    #[serde(default)]
    require_mtls: Option<bool>,
    #[serde(default)]
    rules: Option<Vec<Spanned<RawAuthorizationRule>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAuthorizationRule {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    identities: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    service_accounts: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    namespaces: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    networks: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    http: Option<Spanned<Vec<Spanned<RawMatch>>>>,
}

impl Checker {
    pub(super) fn authorization(&mut self, raw: Spanned<RawAuthorization>) {
        let raw = raw.value;
        let head = self.policy_head(
            PolicyKind::Authorization,
            RawHead {
                name: &raw.name,
                namespace: raw.namespace.as_ref(),
                service: &raw.service,
                port: raw.port.as_ref(),
            },
        );
        self.workload_conflicts(&head, raw.port.as_ref().map_or(raw.service.referenced, |p| p.referenced));
        let default = match &raw.default {
            None => DefaultAction::Deny,
            Some(d) => match d.value.trim() {
                "deny" => DefaultAction::Deny,
                "allow" => DefaultAction::Allow,
                "authenticated" => DefaultAction::Authenticated,
                other => {
                    let message = format!("unknown default {}: use deny, allow or authenticated", quote(other));
                    self.fail(&d.referenced, &head.object, "default", message);
                    DefaultAction::Deny
                }
            },
        };
        let mut rules = Vec::new();
        let mut names: HashMap<String, u32> = HashMap::new();
        for (i, rule) in raw.rules.unwrap_or_default().into_iter().enumerate() {
            let name = match &rule.value.name {
                Some(name) => {
                    self.policy_label(&format!("{} rule {}", head.object, quote(&name.value)), "name", name);
                    name.value.clone()
                }
                None => format!("rule-{i}"),
            };
            let name_at = rule.value.name.as_ref().map_or(rule.referenced, |n| n.referenced);
            if let Some(first) = names.get(&name) {
                let message = format!("duplicate rule name (first used on line {first}): give each rule a unique name");
                self.fail(&name_at, &format!("{} rule {}", head.object, quote(&name)), "", message);
            } else {
                names.insert(name.clone(), to_u32(name_at.line()));
            }
            rules.push(self.authorization_rule(&head, name, rule));
        }
        self.authorizations.push(AuthorizationPolicy {
            name: head.name,
            namespace: head.namespace,
            service: head.key,
            port: head.port,
            default,
            require_mtls: raw.require_mtls.unwrap_or(false),
            rules,
        });
    }

    /// Reports a policy selecting a workload port another policy already
    /// selects (through the same service, or another with the same account).
    fn workload_conflicts(&mut self, head: &PolicyHead, at: Location) {
        let Some(svc) = &head.service else { return };
        let mut selected = Vec::new();
        for port in head.ports.iter().filter_map(|p| svc.port(*p)) {
            for workload_port in svc.workload_ports(port) {
                selected.push((svc.key.namespace.clone(), svc.service_account.clone(), workload_port));
            }
        }
        if let Some((key, (name, line))) = selected.iter().find_map(|k| Some((k, self.authorized.get(k)?))) {
            let message = format!(
                "selects port {} of the workloads running as service account {} in namespace {}, as authorization \
                 {} (line {line}) does: merge the two policies",
                key.2,
                quote(&key.1),
                quote(&key.0),
                quote(name)
            );
            let field = if head.port.is_some() { "port" } else { "service" };
            self.fail(&at, &head.object, field, message);
            return;
        }
        for key in selected {
            self.authorized.insert(key, (head.name.clone(), head.line));
        }
    }

    fn authorization_rule(
        &mut self,
        head: &PolicyHead,
        name: String,
        raw: Spanned<RawAuthorizationRule>,
    ) -> AuthorizationRule {
        let at = raw.referenced;
        let raw = raw.value;
        let object = format!("{} rule {}", head.object, quote(&name));
        let no_clients = raw.identities.as_ref().is_none_or(Vec::is_empty)
            && raw.service_accounts.as_ref().is_none_or(Vec::is_empty)
            && raw.namespaces.as_ref().is_none_or(Vec::is_empty)
            && raw.networks.as_ref().is_none_or(Vec::is_empty);
        if no_clients {
            let message = "it allows no client: give identities, serviceAccounts, namespaces or networks \
                           (0.0.0.0/0 and ::/0 allow every network)";
            self.fail(&at, &object, "", message);
        }
        let mut rule = AuthorizationRule {
            name,
            identities: Vec::new(),
            service_accounts: Vec::new(),
            namespaces: Vec::new(),
            networks: Vec::new(),
            http: Vec::new(),
        };
        for (i, id) in raw.identities.unwrap_or_default().into_iter().enumerate() {
            match id.value.trim().parse::<SpiffeId>() {
                Ok(parsed) => push_unique(&mut rule.identities, parsed.to_string()),
                Err(err) => self.fail(&id.referenced, &object, &format!("identities[{i}]"), err),
            }
        }
        for (i, sa) in raw.service_accounts.unwrap_or_default().into_iter().enumerate() {
            let text = sa.value.trim();
            let (namespace, account) = text.split_once('/').unwrap_or((&head.namespace, text));
            let problem = dns_label_error(namespace)
                .map(|why| format!("namespace {}: {why}", quote(namespace)))
                .or_else(|| dns_label_error(account).map(|why| format!("name {}: {why}", quote(account))));
            match problem {
                Some(why) => {
                    let message = format!(
                        "invalid service account {} ({why}); write name (in the policy's namespace) or namespace/name, \
                         each a DNS label",
                        quote(&sa.value)
                    );
                    self.fail(&sa.referenced, &object, &format!("serviceAccounts[{i}]"), message);
                }
                None => {
                    let account = ServiceAccountRef { namespace: namespace.to_string(), name: account.to_string() };
                    push_unique(&mut rule.service_accounts, account);
                }
            }
        }
        for (i, ns) in raw.namespaces.unwrap_or_default().into_iter().enumerate() {
            match dns_label_error(ns.value.trim()) {
                Some(why) => {
                    let message = format!("invalid namespace {}: {why}", quote(&ns.value));
                    self.fail(&ns.referenced, &object, &format!("namespaces[{i}]"), message);
                }
                None => push_unique(&mut rule.namespaces, ns.value.trim().to_string()),
            }
        }
        for (i, net) in raw.networks.unwrap_or_default().into_iter().enumerate() {
            match net.value.trim().parse::<Cidr>() {
                Ok(cidr) => push_unique(&mut rule.networks, cidr),
                Err(why) => {
                    let message =
                        format!("invalid CIDR {}: {why} (write a network such as 10.0.0.0/8)", quote(&net.value));
                    self.fail(&net.referenced, &object, &format!("networks[{i}]"), message);
                }
            }
        }
        if let Some(list) = raw.http {
            if list.value.is_empty() {
                let message = "the list is empty: omit http to cover every request";
                self.fail(&list.referenced, &object, "http", message);
            }
            for (i, m) in list.value.into_iter().enumerate() {
                if let Some(m) = self.request_match(&object, &format!("http[{i}]"), m) {
                    rule.http.push(m);
                }
            }
        }
        rule
    }
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, value: T) {
    if !list.contains(&value) {
        list.push(value);
    }
}
