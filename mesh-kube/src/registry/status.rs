//! What the status of a route or policy should say, as pure functions of
//! the object, the problems the registry found in it and the Services that
//! exist: `Accepted` (is it served?) and `ResolvedRefs` (do the Services it
//! names exist?), with the Gateway API's reasons for routes (one entry per
//! Service `parentRef`, under the mesh's `controllerName`) and the same two
//! conditions on the mesh's policies. [`merge`] keeps a condition's
//! `lastTransitionTime` while its status stays, and the `*_status`
//! functions answer `None` when the object already says what it should, so
//! the writer ([`super::status_writer`]) never rewrites an unchanged status
//! (its own writes come back through the watch).

use crate::crd::{Condition, ConditionStatus, PolicyStatus};
use crate::gateway::{BackendRef, GRPCRoute, HTTPRoute, ParentReference, RouteParentStatus, RouteStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mesh_policy::model::ServiceKey;
use mesh_registry::problem::{Location, Problem};

/// Condition type: the object is valid and served.
pub const ACCEPTED: &str = "Accepted";
/// Condition type: every Service it refers to exists.
pub const RESOLVED_REFS: &str = "ResolvedRefs";

/// A condition as decided, before it gets its times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// [`ACCEPTED`] or [`RESOLVED_REFS`].
    pub type_: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// CamelCase, from the Gateway API's reasons where one fits.
    pub reason: &'static str,
    /// What is wrong and what to do (or what is served).
    pub message: String,
}

impl Wanted {
    fn new(type_: &'static str, ok: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, ok, reason, message: message.into() }
    }
}

/// The ports of the Service with this key, or `None` when it does not exist.
pub type Services<'a> = &'a dyn Fn(&ServiceKey) -> Option<Vec<u16>>;

/// The texts (`field: message`) of the problems located in one object.
pub fn problems_of(problems: &[Problem], kind: &str, namespace: &str, name: &str) -> Vec<(String, String)> {
    problems
        .iter()
        .filter_map(|p| match &p.at {
            Location::Object { kind: k, namespace: ns, name: n, field }
                if k == kind && ns == namespace && n == name =>
            {
                Some((field.clone(), p.message.clone()))
            }
            _ => None,
        })
        .collect()
}

fn join(problems: &[(String, String)]) -> String {
    let texts: Vec<String> =
        problems.iter().map(|(f, m)| if f.is_empty() { m.clone() } else { format!("{f}: {m}") }).collect();
    texts.join("; ")
}

/// `namespace/name`, as kubectl shows it.
fn named(key: &ServiceKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

fn ports_text(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    if list.is_empty() { "none".into() } else { list.join(", ") }
}

/// An HTTPRoute's backends, each with its field path.
pub fn http_backends(route: &HTTPRoute) -> Vec<(String, &BackendRef)> {
    with_paths(route.spec.rules.iter().map(|r| &r.backend_refs))
}

/// A GRPCRoute's backends, each with its field path.
pub fn grpc_backends(route: &GRPCRoute) -> Vec<(String, &BackendRef)> {
    with_paths(route.spec.rules.iter().map(|r| &r.backend_refs))
}

/// Each rule's backend references with their field path (`spec.rules[i].backendRefs[j]`).
fn with_paths<'a>(rules: impl Iterator<Item = &'a Vec<BackendRef>>) -> Vec<(String, &'a BackendRef)> {
    rules
        .enumerate()
        .flat_map(|(i, refs)| {
            refs.iter().enumerate().map(move |(j, b)| (format!("spec.rules[{i}].backendRefs[{j}]"), b))
        })
        .collect()
}

/// The conditions of a route (in `namespace`) for each of its Service
/// parents: `problems` are the route's own (any of them keeps the whole
/// route from being served), `backends` its backend references with their
/// fields.
pub fn route_conditions(
    namespace: &str,
    parents: &[ParentReference],
    backends: &[(String, &BackendRef)],
    problems: &[(String, String)],
    services: Services<'_>,
) -> Vec<(ParentReference, Vec<Wanted>)> {
    let resolved = backends_resolved(namespace, backends, problems, services);
    let mut out = Vec::new();
    for (i, parent) in parents.iter().enumerate().filter(|(_, p)| p.is_service()) {
        let key =
            ServiceKey::new(parent.namespace.clone().unwrap_or_else(|| namespace.to_string()), parent.name.clone());
        let k = named(&key);
        let accepted = if !problems.is_empty() {
            Wanted::new(ACCEPTED, false, "UnsupportedValue", format!("not served: {}", join(problems)))
        } else {
            match services(&key) {
                None => Wanted::new(
                    ACCEPTED,
                    false,
                    "NoMatchingParent",
                    format!("spec.parentRefs[{i}]: Service {k} does not exist: create it or fix the reference"),
                ),
                Some(ports) => match parent.port.and_then(|p| u16::try_from(p).ok()) {
                    Some(port) if !ports.contains(&port) => Wanted::new(
                        ACCEPTED,
                        false,
                        "NoMatchingParent",
                        format!(
                            "spec.parentRefs[{i}].port: Service {k} has no port {port} (it has {}): fix the port",
                            ports_text(&ports)
                        ),
                    ),
                    Some(port) => {
                        Wanted::new(ACCEPTED, true, "Accepted", format!("served for calls to Service {k} port {port}"))
                    }
                    None => Wanted::new(ACCEPTED, true, "Accepted", format!("served for calls to Service {k}")),
                },
            }
        };
        out.push((parent.clone(), vec![accepted, resolved.clone()]));
    }
    out
}

/// `ResolvedRefs` of a route: backends of another kind or namespace (reported
/// as problems) or naming a Service (or port) that does not exist.
fn backends_resolved(
    namespace: &str,
    backends: &[(String, &BackendRef)],
    problems: &[(String, String)],
    services: Services<'_>,
) -> Wanted {
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut reason = "";
    for (field, message) in problems {
        // The fields `routes_from` reports a backend's kind and namespace under.
        let Some(at) = field.find(".backendRefs[") else { continue };
        let Some(close) = field[at..].find(']') else { continue };
        let rest = &field[at + close + 1..];
        let why = match rest {
            "" => "InvalidKind",
            ".namespace" => "RefNotPermitted",
            _ => continue,
        };
        if reason.is_empty() {
            reason = why;
        }
        refused.push((field.clone(), message.clone()));
    }
    if !refused.is_empty() {
        return Wanted::new(RESOLVED_REFS, false, reason, join(&refused));
    }
    let mut missing = Vec::new();
    for (field, b) in backends {
        if b.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            continue;
        }
        let key = ServiceKey::new(namespace, b.name.clone());
        let k = named(&key);
        match services(&key) {
            None => {
                missing.push(format!("{field}: Service {k} does not exist: create it or fix the name"));
            }
            Some(ports) => {
                if let Some(port) = b.port.and_then(|p| u16::try_from(p).ok())
                    && !ports.contains(&port)
                {
                    missing.push(format!(
                        "{field}.port: Service {k} has no port {port} (it has {}): fix the port",
                        ports_text(&ports)
                    ));
                }
            }
        }
    }
    if missing.is_empty() {
        Wanted::new(RESOLVED_REFS, true, "ResolvedRefs", "every backend Service exists")
    } else {
        Wanted::new(RESOLVED_REFS, false, "BackendNotFound", missing.join("; "))
    }
}

/// The conditions of a policy targeting `target` (and `port`): `problems`
/// keep it from being served; `conflict` names the policy served instead.
pub fn policy_conditions(
    target: &ServiceKey,
    port: Option<u16>,
    problems: &[(String, String)],
    conflict: Option<String>,
    services: Services<'_>,
) -> Vec<Wanted> {
    let t = named(target);
    let accepted = if !problems.is_empty() {
        Wanted::new(ACCEPTED, false, "Invalid", format!("not served: {}", join(problems)))
    } else if let Some(conflict) = conflict {
        Wanted::new(ACCEPTED, false, "Conflicted", format!("not served: {conflict}"))
    } else {
        Wanted::new(ACCEPTED, true, "Accepted", format!("served for Service {t}"))
    };
    let resolved = match services(target) {
        None => Wanted::new(
            RESOLVED_REFS,
            false,
            "TargetNotFound",
            format!("spec.targetRef.name: Service {t} does not exist: create it or fix the name"),
        ),
        Some(ports) => match port {
            Some(port) if !ports.contains(&port) => Wanted::new(
                RESOLVED_REFS,
                false,
                "TargetNotFound",
                format!(
                    "spec.targetRef.port: Service {t} has no port {port} (it has {}): fix the port",
                    ports_text(&ports)
                ),
            ),
            _ => Wanted::new(RESOLVED_REFS, true, "ResolvedRefs", format!("Service {t} exists")),
        },
    };
    vec![accepted, resolved]
}

/// Splits an AuthorizationPolicy's problems: the conflict `authorizations_from`
/// reports on `spec.targetRef` (another policy selects the same port) from
/// problems with the policy itself.
pub fn split_conflict(problems: Vec<(String, String)>) -> (Vec<(String, String)>, Option<String>) {
    let (conflicts, rest): (Vec<_>, Vec<_>) = problems.into_iter().partition(|(f, _)| f == "spec.targetRef");
    let conflict = (!conflicts.is_empty()).then(|| join(&conflicts));
    (rest, conflict)
}

/// The conditions as they should be written: each keeps the
/// `lastTransitionTime` of the `existing` condition of its type while its
/// status is the same (as Kubernetes' `meta.SetStatusCondition` does).
pub fn merge(existing: &[Condition], wanted: &[Wanted], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = ConditionStatus::from(w.ok);
            let since = existing
                .iter()
                .find(|c| c.type_ == w.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: w.type_.to_string(),
                status,
                observed_generation: generation,
                last_transition_time: since,
                reason: w.reason.to_string(),
                message: w.message.clone(),
            }
        })
        .collect()
}

/// Whether `existing` already says what `wanted` says (times aside).
fn up_to_date(existing: &[Condition], wanted: &[Wanted], generation: Option<i64>) -> bool {
    wanted.iter().all(|w| {
        existing.iter().any(|c| {
            c.type_ == w.type_
                && c.status == ConditionStatus::from(w.ok)
                && c.reason == w.reason
                && c.message == w.message
                && c.observed_generation == generation
        })
    })
}

/// A policy's new status, or `None` when `existing` already says it.
pub fn policy_status(
    existing: Option<&PolicyStatus>,
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> Option<PolicyStatus> {
    let have = existing.map_or(&[][..], |s| &s.conditions[..]);
    if up_to_date(have, wanted, generation) {
        return None;
    }
    Some(PolicyStatus { conditions: merge(have, wanted, generation, now) })
}

/// The most parent entries a route status holds.
const MAX_PARENTS: usize = 32;

/// A route's new status: the entries of other controllers as they are, then
/// `controller`'s for `ours`; `None` when `existing` already says it.
pub fn route_status(
    existing: Option<&RouteStatus>,
    controller: &str,
    ours: &[(ParentReference, Vec<Wanted>)],
    generation: Option<i64>,
    now: &Time,
) -> Option<RouteStatus> {
    let have = existing.map_or(&[][..], |s| &s.parents[..]);
    let (mine, others): (Vec<&RouteParentStatus>, Vec<&RouteParentStatus>) =
        have.iter().partition(|p| p.controller_name == controller);
    // Never more than the list holds (a cut list would differ forever).
    let ours = &ours[..ours.len().min(MAX_PARENTS.saturating_sub(others.len()))];
    let same = mine.len() == ours.len()
        && mine.iter().zip(ours).all(|(m, (parent, wanted))| {
            m.parent_ref == *parent
                && m.conditions.len() == wanted.len()
                && up_to_date(&m.conditions, wanted, generation)
        });
    if same {
        return None;
    }
    let mut parents: Vec<RouteParentStatus> = others.into_iter().cloned().collect();
    for (parent, wanted) in ours {
        let before = mine.iter().find(|m| m.parent_ref == *parent).map_or(&[][..], |m| &m.conditions[..]);
        parents.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: controller.to_string(),
            conditions: merge(before, wanted, generation, now),
        });
    }
    Some(RouteStatus { parents })
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
