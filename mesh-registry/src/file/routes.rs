//! The `routes` section: outbound route policies, one per service port.

use super::check::{Checker, PolicyHead, PolicyKind, RawHead, list_ports};
use super::matches::RawMatch;
use super::services::MAX_WEIGHT;
use super::text::{quote, to_u32};
use super::traffic::{RawFaults, RawRateLimit, RawRetry};
use crate::model::ServiceKey;
use mesh_policy::check::{ports_overlap, shadowed_rules};
use mesh_policy::model::{Backend, RequestMatch, RoutePolicy, RouteRule};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;

/// Backend weight when the file gives none.
const DEFAULT_BACKEND_WEIGHT: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRoutePolicy {
    name: Spanned<String>,
    #[serde(default)]
    namespace: Option<Spanned<String>>,
    service: Spanned<String>,
    #[serde(default)]
    port: Option<Spanned<i64>>,
    #[serde(default)]
    rules: Option<Spanned<Vec<Spanned<RawRule>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    matches: Option<Spanned<Vec<Spanned<RawMatch>>>>,
    #[serde(default)]
    backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    retries: Option<Spanned<RawRetry>>,
    #[serde(default)]
    faults: Option<Spanned<RawFaults>>,
    #[serde(default)]
    rate_limit: Option<Spanned<RawRateLimit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBackend {
    service: Spanned<String>,
    #[serde(default)]
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    port: Option<Spanned<i64>>,
    #[serde(default)]
    weight: Option<Spanned<i64>>,
}

/// A checked rule, with what the overlap check needs.
struct CheckedRule {
    rule: RouteRule,
    at: Location,
    /// Every match checked fine (else the overlap check skips the rule).
    complete: bool,
}

impl Checker {
    pub(super) fn route_policy(&mut self, raw: Spanned<RawRoutePolicy>) {
        let at = raw.referenced;
        let raw = raw.value;
        let head = self.policy_head(
            PolicyKind::Route,
            RawHead {
                name: &raw.name,
                namespace: raw.namespace.as_ref(),
                service: &raw.service,
                port: raw.port.as_ref(),
            },
        );
        self.route_conflicts(&head, raw.port.as_ref().map_or(raw.service.referenced, |p| p.referenced));

        let rules = match raw.rules {
            Some(rules) if !rules.value.is_empty() => rules.value,
            Some(rules) => {
                self.fail(&rules.referenced, &head.object, "rules", "the list is empty: give at least one rule");
                Vec::new()
            }
            None => {
                self.fail(&at, &head.object, "", "it has no rules: give at least one under \"rules\"");
                Vec::new()
            }
        };
        let mut checked: Vec<CheckedRule> = Vec::new();
        let mut names: HashMap<String, u32> = HashMap::new();
        for (i, rule) in rules.into_iter().enumerate() {
            let rule_at = rule.referenced;
            let name = match &rule.value.name {
                Some(name) => {
                    self.policy_label(&format!("{} rule {}", head.object, quote(&name.value)), "name", name);
                    name.value.clone()
                }
                None => format!("rule-{i}"),
            };
            let name_at = rule.value.name.as_ref().map_or(rule_at, |n| n.referenced);
            if let Some(first) = names.get(&name) {
                let message = format!("duplicate rule name (first used on line {first}): give each rule a unique name");
                self.fail(&name_at, &format!("{} rule {}", head.object, quote(&name)), "", message);
            } else {
                names.insert(name.clone(), to_u32(name_at.line()));
            }
            checked.push(self.route_rule(&head, name, rule));
        }
        self.unreachable_rules(&head.object, &checked);
        self.routes.push(RoutePolicy {
            name: head.name,
            namespace: head.namespace,
            service: head.key,
            port: head.port,
            rules: checked.into_iter().map(|c| c.rule).collect(),
        });
    }

    /// Reports a policy routing a service port another policy already routes.
    fn route_conflicts(&mut self, head: &PolicyHead, at: Location) {
        if head.service.is_none() {
            return;
        }
        let clash = self.routed.iter().find(|(key, port, _, _)| key == &head.key && ports_overlap(*port, head.port));
        if let Some((_, port, name, line)) = clash {
            let what = match (*port, head.port) {
                (Some(p), _) | (None, Some(p)) => format!("port {p} of service {}", quote(&head.key.name)),
                (None, None) => format!("every port of service {}", quote(&head.key.name)),
            };
            let message = format!(
                "route {} (line {line}) already routes {what}: merge the two policies' rules into one",
                quote(name)
            );
            self.fail(&at, &head.object, if head.port.is_some() { "port" } else { "service" }, message);
            return;
        }
        self.routed.push((head.key.clone(), head.port, head.name.clone(), head.line));
    }

    fn route_rule(&mut self, head: &PolicyHead, name: String, raw: Spanned<RawRule>) -> CheckedRule {
        let at = raw.referenced;
        let raw = raw.value;
        let object = format!("{} rule {}", head.object, quote(&name));
        let mut complete = true;
        let mut matches = Vec::new();
        if let Some(list) = raw.matches {
            if list.value.is_empty() {
                let message = "the list is empty: omit matches to match every request";
                self.fail(&list.referenced, &object, "matches", message);
            }
            for (i, m) in list.value.into_iter().enumerate() {
                match self.request_match(&object, &format!("matches[{i}]"), m) {
                    Some(m) => matches.push(m),
                    None => complete = false,
                }
            }
        }
        let backends = raw.backends.map(|b| self.backends(head, &object, b)).unwrap_or_default();
        let timeout = raw.timeout.and_then(|t| self.duration(&object, "timeout", &t)).filter(|d| !d.is_zero());
        let retry = raw.retries.map(|r| self.retry(&object, r.value));
        let fault = raw.faults.map(|f| self.faults(&object, f));
        let rate_limit = raw.rate_limit.and_then(|r| self.rate_limit(&object, r.value));
        CheckedRule { rule: RouteRule { name, matches, backends, timeout, retry, fault, rate_limit }, at, complete }
    }

    fn backends(&mut self, head: &PolicyHead, object: &str, raw: Spanned<Vec<Spanned<RawBackend>>>) -> Vec<Backend> {
        if raw.value.is_empty() {
            let message = "the list is empty: omit backends to send requests to the target service itself";
            self.fail(&raw.referenced, object, "backends", message);
            return Vec::new();
        }
        let mut backends: Vec<Backend> = Vec::new();
        let mut lines: Vec<u32> = Vec::new();
        let mut all_weighed = true;
        for (i, entry) in raw.value.into_iter().enumerate() {
            let entry = entry.value;
            let field = |name: &str| format!("backends[{i}].{name}");
            let namespace = match &entry.namespace {
                Some(ns) => {
                    self.policy_label(object, &field("namespace"), ns);
                    ns.value.clone()
                }
                None => head.namespace.clone(),
            };
            let key = ServiceKey::new(namespace, entry.service.value.clone());
            let port = entry.port.as_ref().and_then(|p| self.policy_port(object, &field("port"), p));
            let weight = match &entry.weight {
                Some(w) => self.count(object, &field("weight"), w, MAX_WEIGHT),
                None => Some(DEFAULT_BACKEND_WEIGHT),
            };
            all_weighed &= weight.is_some();
            let problem = match self.find_service(&key) {
                None => {
                    let message =
                        format!("unknown service {} in namespace {}", quote(&key.name), quote(&key.namespace));
                    Some((entry.service.referenced, field("service"), message))
                }
                Some(svc) => {
                    // Without a port of its own, a backend takes the port the
                    // route's target resolved to: every routed port must exist.
                    let needed: Vec<u16> = match port {
                        Some(p) => vec![p],
                        None => head.port.map_or_else(|| head.ports.clone(), |p| vec![p]),
                    };
                    needed.into_iter().find(|p| svc.port(*p).is_none()).map(|missing| {
                        let (at, hint) = match &entry.port {
                            Some(p) => (p.referenced, String::new()),
                            None => (
                                entry.service.referenced,
                                format!(
                                    ": without a port of its own the backend takes the routed port {missing} of \
                                     service {}; give it a port",
                                    quote(&head.key.name)
                                ),
                            ),
                        };
                        let message =
                            format!("service {} has no port {missing}{}{hint}", quote(&key.name), list_ports(svc));
                        (at, field("port"), message)
                    })
                }
            };
            if let Some((at, field, message)) = problem {
                self.fail(&at, object, &field, message);
            }
            let backend = Backend { service: key, port: port.or(head.port), weight: weight.unwrap_or(0) };
            let line = to_u32(entry.service.referenced.line());
            if let Some(first) = backends.iter().position(|b| b.service == backend.service && b.port == backend.port) {
                let message = format!(
                    "service {} is listed twice (first on line {}): list each backend once",
                    quote(&backend.service.name),
                    lines[first]
                );
                self.fail(&entry.service.referenced, object, &field("service"), message);
                continue;
            }
            backends.push(backend);
            lines.push(line);
        }
        if all_weighed && backends.iter().all(|b| b.weight == 0) {
            let message = "the weights sum to 0: give at least one backend a weight above 0";
            self.fail(&raw.referenced, object, "backends", message);
        }
        backends
    }

    /// Reports rules that can never match: with first-match-wins, a rule all
    /// of whose matches an earlier rule's matches cover is dead. Only rules
    /// that checked out whole take part ([`mesh_policy::check::shadowed_rules`]).
    fn unreachable_rules(&mut self, object: &str, rules: &[CheckedRule]) {
        let complete: Vec<&CheckedRule> = rules.iter().filter(|r| r.complete).collect();
        let matches: Vec<&[RequestMatch]> = complete.iter().map(|r| r.rule.matches.as_slice()).collect();
        for shadowed in shadowed_rules(&matches) {
            let later = complete[shadowed.rule];
            let names: Vec<String> = shadowed
                .by
                .iter()
                .map(|&i| format!("rule {} (line {})", quote(&complete[i].rule.name), complete[i].at.line()))
                .collect();
            let message = format!(
                "can never match: every request it matches is matched first by {}; \
                 reorder the rules or narrow the earlier matches",
                names.join(" and ")
            );
            self.fail(&later.at, &format!("{object} rule {}", quote(&later.rule.name)), "", message);
        }
    }
}
