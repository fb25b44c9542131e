use super::*;
use crate::crd::AuthorizationPolicy;
use crate::registry::policy::authorizations_from;
use crate::registry::routes::routes_from;
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;

const CONTROLLER: &str = "mesh.dev/control";

fn http(yaml: &str) -> HTTPRoute {
    serde_saphyr::from_str(yaml).expect("an HTTPRoute")
}

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(second).expect("a time"))
}

/// Services `shop/books` (ports 80, 81) and `shop/books-v1` (80).
fn cluster() -> BTreeMap<ServiceKey, Vec<u16>> {
    [(ServiceKey::new("shop", "books"), vec![80, 81]), (ServiceKey::new("shop", "books-v1"), vec![80])].into()
}

/// The conditions of each Service parent of `route`, computed as the
/// writer does: the route's problems from `routes_from`, then the Services.
fn conditions_of(route: &HTTPRoute, services: &BTreeMap<ServiceKey, Vec<u16>>) -> Vec<(ParentReference, Vec<Wanted>)> {
    let (_, problems) = routes_from(std::slice::from_ref(route), &[]);
    let name = route.metadata.name.clone().unwrap_or_default();
    let own = problems_of(&problems, "HTTPRoute", "shop", &name);
    let lookup = |k: &ServiceKey| services.get(k).cloned();
    route_conditions("shop", &route.spec.parent_refs, &http_backends(route), &own, &lookup)
}

fn find<'a>(wanted: &'a [Wanted], type_: &str) -> &'a Wanted {
    wanted.iter().find(|w| w.type_ == type_).expect("the condition is there")
}

const VALID: &str = r#"
metadata: {name: canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: books, port: 80}, {name: some-gateway}]
  rules:
  - backendRefs: [{name: books-v1, port: 80}]
"#;

/// Catches: a valid route not Accepted, entries written for Gateway parents
/// (another controller's business), the parentRef not echoed as written.
#[test]
fn a_valid_route_is_accepted_with_its_refs_resolved() {
    let route = http(VALID);
    let out = conditions_of(&route, &cluster());
    assert_eq!(out.len(), 1, "one entry, for the Service parent only: {out:?}");
    assert_eq!(out[0].0, route.spec.parent_refs[0]);
    let accepted = find(&out[0].1, ACCEPTED);
    assert!(accepted.ok && accepted.reason == "Accepted", "{accepted:?}");
    let resolved = find(&out[0].1, RESOLVED_REFS);
    assert!(resolved.ok && resolved.reason == "ResolvedRefs", "{resolved:?}");
}

/// Catches: a route the registry does not serve reported as Accepted, or
/// its message not naming the field at fault.
#[test]
fn a_route_with_a_problem_is_not_accepted_and_names_the_field() {
    let route = http(
        r#"
metadata: {name: redirect, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: books}]
  rules:
  - filters: [{type: RequestRedirect}]
"#,
    );
    let out = conditions_of(&route, &cluster());
    let accepted = find(&out[0].1, ACCEPTED);
    assert!(!accepted.ok && accepted.reason == "UnsupportedValue", "{accepted:?}");
    assert!(accepted.message.contains("spec.rules[0].filters[0]"), "{}", accepted.message);
    assert!(accepted.message.contains("RequestRedirect"), "{}", accepted.message);
}

/// Catches: a backend Service that does not exist passed as resolved, the
/// message not naming the backend's field, or the route then not Accepted
/// (it is served; calls to that backend fail until the Service exists).
#[test]
fn a_missing_backend_service_is_backend_not_found() {
    let route = http(&VALID.replace("books-v1", "books-v9"));
    let out = conditions_of(&route, &cluster());
    let resolved = find(&out[0].1, RESOLVED_REFS);
    assert!(!resolved.ok && resolved.reason == "BackendNotFound", "{resolved:?}");
    assert!(resolved.message.contains("spec.rules[0].backendRefs[0]"), "{}", resolved.message);
    assert!(resolved.message.contains("shop/books-v9"), "{}", resolved.message);
    assert!(find(&out[0].1, ACCEPTED).ok);

    // A backend port the Service does not have is not found either.
    let route = http(&VALID.replace("{name: books-v1, port: 80}", "{name: books-v1, port: 8080}"));
    let resolved = find(&conditions_of(&route, &cluster())[0].1, RESOLVED_REFS).clone();
    assert!(!resolved.ok && resolved.message.contains("backendRefs[0].port"), "{resolved:?}");

    // Creating the Service resolves it.
    let mut services = cluster();
    services.insert(ServiceKey::new("shop", "books-v9"), vec![80]);
    let route = http(&VALID.replace("books-v1", "books-v9"));
    assert!(find(&conditions_of(&route, &services)[0].1, RESOLVED_REFS).ok);
}

/// Catches: a parent Service (or port) that does not exist reported as
/// Accepted: nothing would ever use the route.
#[test]
fn a_missing_parent_is_no_matching_parent() {
    let route = http(&VALID.replace("name: books, port: 80", "name: books, port: 90"));
    let accepted = find(&conditions_of(&route, &cluster())[0].1, ACCEPTED).clone();
    assert!(!accepted.ok && accepted.reason == "NoMatchingParent", "{accepted:?}");
    assert!(accepted.message.contains("spec.parentRefs[0].port") && accepted.message.contains("80, 81"));

    let route = http(&VALID.replace("name: books, port: 80", "name: authors"));
    let accepted = find(&conditions_of(&route, &cluster())[0].1, ACCEPTED).clone();
    assert!(!accepted.ok && accepted.reason == "NoMatchingParent", "{accepted:?}");
    assert!(accepted.message.contains("shop/authors"), "{}", accepted.message);
}

/// Catches: the reasons of backends the mesh refuses (another kind, another
/// namespace) lost, or their problems read as resolved.
#[test]
fn refused_backends_have_the_gateway_api_reasons() {
    let kind = http(&VALID.replace("{name: books-v1, port: 80}", "{group: example.com, kind: Bucket, name: b}"));
    let resolved = find(&conditions_of(&kind, &cluster())[0].1, RESOLVED_REFS).clone();
    assert_eq!((resolved.ok, resolved.reason), (false, "InvalidKind"), "{resolved:?}");
    let other = http(&VALID.replace("{name: books-v1, port: 80}", "{name: books-v1, namespace: other, port: 80}"));
    let resolved = find(&conditions_of(&other, &cluster())[0].1, RESOLVED_REFS).clone();
    assert_eq!((resolved.ok, resolved.reason), (false, "RefNotPermitted"), "{resolved:?}");
    assert!(resolved.message.contains("spec.rules[0].backendRefs[0].namespace"), "{}", resolved.message);
}

fn authorization(name: &str, created: &str, target: &str, port: Option<u16>, rule: &str) -> AuthorizationPolicy {
    let port = port.map_or_else(String::new, |p| format!(", port: {p}"));
    serde_saphyr::from_str(&format!(
        r#"
metadata: {{name: {name}, namespace: shop, creationTimestamp: "{created}"}}
spec:
  targetRef: {{kind: Service, name: {target}{port}}}
  rules: [{{name: {rule}, from: {{serviceAccounts: [{{name: web}}]}}}}]
"#
    ))
    .expect("an AuthorizationPolicy")
}

fn authorization_conditions(all: &[AuthorizationPolicy], which: usize) -> Vec<Wanted> {
    let (_, problems) = authorizations_from(all);
    let p = &all[which];
    let name = p.metadata.name.clone().unwrap_or_default();
    let (own, conflict) = split_conflict(problems_of(&problems, "AuthorizationPolicy", "shop", &name));
    let services = cluster();
    let lookup = |k: &ServiceKey| services.get(k).cloned();
    let port = p.spec.target_ref.port.and_then(|p| u16::try_from(p).ok());
    policy_conditions(&ServiceKey::new("shop", p.spec.target_ref.name.clone()), port, &own, conflict, &lookup)
}

/// Catches: a policy losing a conflict reported as Accepted (it is not
/// served), an invalid one not naming its field, a missing target Service
/// or port reported as resolved.
#[test]
fn policies_accepted_conflicted_invalid_and_target_not_found() {
    let older = authorization("a", "2026-01-01T00:00:00Z", "books", Some(80), "web");
    let newer = authorization("b", "2026-02-01T00:00:00Z", "books", Some(80), "web");
    let all = [older, newer];
    let first = authorization_conditions(&all, 0);
    assert!(find(&first, ACCEPTED).ok && find(&first, RESOLVED_REFS).ok, "{first:?}");
    let second = authorization_conditions(&all, 1);
    let accepted = find(&second, ACCEPTED);
    assert_eq!((accepted.ok, accepted.reason), (false, "Conflicted"), "{accepted:?}");
    assert!(accepted.message.contains("AuthorizationPolicy a"), "{}", accepted.message);

    let invalid = [authorization("c", "2026-01-01T00:00:00Z", "books", None, "web")];
    let mut bad = invalid[0].clone();
    bad.spec.rules[0].from.networks = vec!["10.0.0.1/99".into()];
    let out = authorization_conditions(&[bad], 0);
    let accepted = find(&out, ACCEPTED);
    assert_eq!((accepted.ok, accepted.reason), (false, "Invalid"), "{accepted:?}");
    assert!(accepted.message.contains("spec.rules[0].from.networks[0]"), "{}", accepted.message);

    let missing = [authorization("d", "2026-01-01T00:00:00Z", "authors", None, "web")];
    let resolved = find(&authorization_conditions(&missing, 0), RESOLVED_REFS).clone();
    assert_eq!((resolved.ok, resolved.reason), (false, "TargetNotFound"), "{resolved:?}");
    assert!(resolved.message.contains("spec.targetRef.name") && resolved.message.contains("shop/authors"));
    let no_port = [authorization("e", "2026-01-01T00:00:00Z", "books", Some(90), "web")];
    let resolved = find(&authorization_conditions(&no_port, 0), RESOLVED_REFS).clone();
    assert!(!resolved.ok && resolved.message.contains("spec.targetRef.port"), "{resolved:?}");
}

fn accepted(ok: bool, message: &str) -> Wanted {
    Wanted::new(ACCEPTED, ok, if ok { "Accepted" } else { "Invalid" }, message)
}

/// Catches: `lastTransitionTime` moved when only the message changed (or
/// not moved when the status flipped), and statuses rewritten when nothing
/// changed (the writer's own update comes back through the watch: a loop).
#[test]
fn transition_times_stay_until_the_status_changes_and_unchanged_is_not_rewritten() {
    let first = policy_status(None, &[accepted(true, "ok")], Some(1), &at(100)).expect("a first status");
    assert_eq!(first.conditions[0].last_transition_time, at(100));
    assert_eq!(first.conditions[0].observed_generation, Some(1));
    assert_eq!(policy_status(Some(&first), &[accepted(true, "ok")], Some(1), &at(200)), None, "unchanged: no write");

    let new_generation = policy_status(Some(&first), &[accepted(true, "ok")], Some(2), &at(200)).expect("rewritten");
    assert_eq!(new_generation.conditions[0].observed_generation, Some(2));
    assert_eq!(new_generation.conditions[0].last_transition_time, at(100), "same status: same transition time");

    let reworded = policy_status(Some(&first), &[accepted(true, "still ok")], Some(1), &at(300)).expect("rewritten");
    assert_eq!(reworded.conditions[0].last_transition_time, at(100));
    let flipped = policy_status(Some(&first), &[accepted(false, "bad")], Some(1), &at(400)).expect("rewritten");
    assert_eq!(flipped.conditions[0].status, ConditionStatus::False);
    assert_eq!(flipped.conditions[0].last_transition_time, at(400), "a flip is a transition");
}

/// Catches: another controller's entries (a Gateway's) dropped when the
/// mesh writes its own (the list is atomic), entries of parents the route
/// no longer has kept, and unchanged entries rewritten.
#[test]
fn route_status_keeps_other_controllers_and_writes_only_changes() {
    let route = http(VALID);
    let gateway_entry = RouteParentStatus {
        parent_ref: route.spec.parent_refs[1].clone(),
        controller_name: "example.net/gateway".into(),
        conditions: merge(&[], &[accepted(true, "theirs")], Some(1), &at(50)),
    };
    let before = RouteStatus { parents: vec![gateway_entry.clone()] };
    let ours = conditions_of(&route, &cluster());
    let written = route_status(Some(&before), CONTROLLER, &ours, Some(1), &at(100)).expect("ours added");
    assert_eq!(written.parents.len(), 2);
    assert_eq!(written.parents[0], gateway_entry, "the other controller's entry is kept as it was");
    assert_eq!(written.parents[1].controller_name, CONTROLLER);
    assert_eq!(route_status(Some(&written), CONTROLLER, &ours, Some(1), &at(200)), None, "unchanged: no write");

    // The Service parent is removed from the route: our entry goes, theirs stays.
    let gone = route_status(Some(&written), CONTROLLER, &[], Some(2), &at(300)).expect("ours removed");
    assert_eq!(gone.parents, vec![gateway_entry]);
}
