use super::*;
use crate::crd::authorization::{AuthorizationPolicySpec, Clients, ServiceAccountRef as KubeSa};
use crate::crd::common::{
    HttpHeaderMatch, HttpMethod, HttpPathMatch, ServiceKind, ServicePortTargetRef, ServiceTargetRef,
};
use crate::crd::traffic::{CircuitBreaker as KubeCb, RetryBudget as KubeBudget, TrafficPolicySpec};

fn policy(rules: Vec<KubeRule>) -> KubeAuthorization {
    let mut p = KubeAuthorization::new(
        "books",
        AuthorizationPolicySpec {
            target_ref: ServicePortTargetRef { kind: ServiceKind::Service, name: "books".into(), port: Some(7001) },
            default: KubeDefault::Authenticated,
            require_mtls: true,
            rules,
        },
    );
    p.metadata.namespace = Some("shop".into());
    p
}

fn rule(name: &str, from: Clients) -> KubeRule {
    KubeRule { name: name.into(), from, http: Vec::new() }
}

/// Catches: a ServiceAccount without namespace not defaulted to the
/// policy's (it would allow a same-named account elsewhere), header names
/// kept in their case, the method or path type mistranslated.
#[test]
fn authorization_policies_translate_to_the_model() {
    let mut r = rule(
        "web",
        Clients {
            service_accounts: vec![
                KubeSa { name: "web".into(), namespace: None },
                KubeSa { name: "ops".into(), namespace: Some("ops".into()) },
            ],
            networks: vec!["10.0.0.0/8".into()],
            ..Default::default()
        },
    );
    r.http = vec![HttpRouteMatch {
        path: Some(HttpPathMatch { type_: PathMatchType::PathPrefix, value: "/books".into() }),
        headers: vec![HttpHeaderMatch { type_: HeaderMatchType::Exact, name: "X-Tenant".into(), value: "a".into() }],
        method: Some(HttpMethod::Get),
    }];
    let got = authorization_from(&policy(vec![r])).expect("valid");
    assert_eq!(got.service, ServiceKey::new("shop", "books"));
    assert_eq!((got.port, got.default, got.require_mtls), (Some(7001), DefaultAction::Authenticated, true));
    let rule = &got.rules[0];
    assert_eq!(
        rule.service_accounts,
        vec![
            ServiceAccountRef { namespace: "shop".into(), name: "web".into() },
            ServiceAccountRef { namespace: "ops".into(), name: "ops".into() }
        ]
    );
    assert_eq!(rule.networks, vec!["10.0.0.0/8".parse::<Cidr>().expect("cidr")]);
    assert_eq!(
        rule.http,
        vec![RequestMatch {
            path: Some(PathMatch::Prefix("/books".into())),
            headers: vec![HeaderMatch { name: "x-tenant".into(), value: ValueMatch::Exact("a".into()) }],
            method: Some("GET".into()),
            host: None,
            grpc: None,
        }]
    );
}

/// What the schema cannot check is checked here, each problem located:
/// catches a bad regex, CIDR or SPIFFE ID served (and failing in every proxy),
/// and a rule allowing no one let through by an API server without CEL.
#[test]
fn invalid_values_are_located_problems() {
    let mut bad = rule(
        "bad",
        Clients { identities: vec!["spiffe://x".into()], networks: vec!["10.0.0.0/99".into()], ..Default::default() },
    );
    bad.http = vec![HttpRouteMatch {
        path: Some(HttpPathMatch { type_: PathMatchType::RegularExpression, value: "/(".into() }),
        ..Default::default()
    }];
    let problems = authorization_from(&policy(vec![bad, rule("empty", Clients::default())])).expect_err("invalid");
    let fields: Vec<String> = problems
        .iter()
        .map(|p| match &p.at {
            Location::Object { kind, namespace, name, field } => format!("{kind} {namespace}/{name} {field}"),
            Location::Text { .. } => String::new(),
        })
        .collect();
    assert_eq!(
        fields,
        vec![
            "AuthorizationPolicy shop/books spec.rules[0].from.identities[0]",
            "AuthorizationPolicy shop/books spec.rules[0].from.networks[0]",
            "AuthorizationPolicy shop/books spec.rules[0].http[0].path.value",
            "AuthorizationPolicy shop/books spec.rules[1].from",
        ]
    );
}

#[test]
fn traffic_policies_translate_with_defaults() {
    let mut tp = KubeTraffic::new(
        "books",
        TrafficPolicySpec {
            target_ref: ServiceTargetRef { kind: ServiceKind::Service, name: "books".into() },
            circuit_breaker: Some(KubeCb {
                consecutive_failures: None,
                base_ejection: Some("1m".into()),
                max_ejection: Some("1h30m".into()),
            }),
            limits: None,
            retry_budget: Some(KubeBudget { ratio: Some(0.5), min_per_second: None, ttl: None }),
        },
    );
    tp.metadata.namespace = Some("shop".into());
    let (key, got) = traffic_from(&tp).expect("valid");
    assert_eq!(key, ServiceKey::new("shop", "books"));
    assert_eq!(got.circuit_breaker.consecutive_failures, CircuitBreaker::DEFAULT_FAILURES);
    assert_eq!(got.circuit_breaker.base_ejection, Duration::from_secs(60));
    assert_eq!(got.circuit_breaker.max_ejection, Duration::from_secs(5400));
    assert_eq!((got.retry_budget.ratio, got.retry_budget.min_per_second), (0.5, 10));
    assert_eq!(got.limits, Limits::default());

    tp.spec.circuit_breaker = Some(KubeCb {
        consecutive_failures: Some(3),
        base_ejection: Some("1m".into()),
        max_ejection: Some("30s".into()),
    });
    let problems = traffic_from(&tp).expect_err("max below base");
    assert!(problems[0].to_string().contains("spec.circuitBreaker.maxEjection"), "{problems:?}");
}

/// The Gateway API's duration format exactly: catches `1.5s`, spaces,
/// missing units or five parts accepted (the API server would refuse them,
/// so accepting them here hides a schema mismatch).
#[test]
fn gateway_durations() {
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("1h1m1s1ms"), Some(Duration::from_millis(3_661_001)));
    for bad in ["", "10", "1.5s", "10 s", "s", "123456s", "1h1m1s1ms1ms", "10d"] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
}

/// Catches two policies for one Service port both served (the proxy would
/// follow whichever the index finds first, silently ignoring the other).
#[test]
fn conflicting_policies_keep_the_oldest() {
    let stamp = |p: &mut KubeAuthorization, name: &str, at: &str| {
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at.parse().expect("timestamp")));
    };
    let clients = || Clients { namespaces: vec!["ops".into()], ..Default::default() };
    let mut older = policy(vec![rule("a", clients())]);
    stamp(&mut older, "zz-older", "2026-01-01T00:00:00Z");
    older.spec.target_ref.port = None;
    let mut newer = policy(vec![rule("b", clients())]);
    stamp(&mut newer, "aa-newer", "2026-02-01T00:00:00Z");
    let mut other = policy(vec![rule("c", clients())]);
    stamp(&mut other, "other", "2026-03-01T00:00:00Z");
    other.spec.target_ref.name = "authors".into();

    let (valid, problems) = authorizations_from(&[newer, older, other]);
    let names: Vec<&str> = valid.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["zz-older", "other"]);
    assert_eq!(problems.len(), 1);
    let text = problems[0].to_string();
    assert!(text.starts_with("AuthorizationPolicy shop/aa-newer spec.targetRef: selects port 7001"), "{text}");
    assert!(text.contains("zz-older"), "{text}");
}
