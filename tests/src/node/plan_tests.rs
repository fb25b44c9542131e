use super::*;
use serde_json::json;

fn images() -> Images {
    let mut i = Images::new();
    i.insert("mesh-proxy".into(), ImageEntry { binary: "/t/debug/mesh-proxy".into(), user: (2102, 2102) });
    i.insert("mesh-test-app".into(), ImageEntry { binary: "/t/debug/mesh-test-app".into(), user: (0, 0) });
    i
}

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
        "spec": spec,
    }))
    .unwrap()
}

fn facts() -> PodFacts {
    PodFacts { pod_ip: "10.244.0.7".into(), host_ip: "10.244.0.1".into() }
}

/// Catches init containers, sidecars and apps started out of order, or a
/// sidecar taken for a run-to-completion init container.
#[test]
fn order_is_init_then_sidecars_in_place_then_apps() {
    let p = pod(json!({
        "initContainers": [
            {"name": "init", "image": "reg/mesh-proxy:1", "args": ["init"]},
            {"name": "proxy", "image": "reg/mesh-proxy:1", "restartPolicy": "Always"},
            {"name": "late-init", "image": "mesh-test-app"},
        ],
        "containers": [{"name": "app", "image": "mesh-test-app:dev"}, {"name": "b", "image": "mesh-test-app"}],
    }));
    let plan = plan(&p, &facts(), &images()).unwrap();
    let got: Vec<(&str, Role)> = plan.iter().map(|c| (c.name.as_str(), c.role)).collect();
    assert_eq!(
        got,
        [
            ("init", Role::Init),
            ("proxy", Role::Sidecar),
            ("late-init", Role::Init),
            ("app", Role::App),
            ("b", Role::App)
        ]
    );
    assert_eq!(plan[0].program, PathBuf::from("/t/debug/mesh-proxy"));
    assert_eq!(plan[0].user, (2102, 2102), "the image's user by default");
}

/// Catches fieldRefs unresolved, `$(VAR)` left unexpanded in args, or an
/// undefined reference silently dropped (the kubelet leaves it as written).
#[test]
fn env_field_refs_and_expansion() {
    let p = pod(json!({
        "serviceAccountName": "books",
        "containers": [{
            "name": "app", "image": "mesh-test-app",
            "command": ["mesh-test-app"],
            "args": ["http-server", "--name", "$(POD_NAME)", "--x", "$(NOPE)", "$$(POD_NAME)"],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "WORKLOAD", "value": "$(POD_NAME).$(NS)"},
            ],
        }],
    }));
    let c = &plan(&p, &facts(), &images()).unwrap()[0];
    let env: BTreeMap<&str, &str> = c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env["POD_NAME"], "web-1");
    assert_eq!(env["NS"], "shop");
    assert_eq!(env["SA"], "books");
    assert_eq!(env["IP"], "10.244.0.7");
    assert_eq!(env["APP"], "web");
    assert_eq!(env["WORKLOAD"], "web-1.shop");
    assert_eq!(c.args, ["http-server", "--name", "web-1", "--x", "$(NOPE)", "$(POD_NAME)"]);
}

/// Catches a command that names another program than the image holds
/// run anyway, unknown images, unsupported env sources and runAsNonRoot
/// ignored: each is an error naming the container.
#[test]
fn what_cannot_run_is_an_error_naming_the_container() {
    let run = |c: serde_json::Value| plan(&pod(json!({"containers": [c]})), &facts(), &images());
    let e = run(json!({"name": "a", "image": "nginx:1"})).unwrap_err();
    assert!(matches!(e, PlanError::UnknownImage { .. }) && e.to_string().contains("container a"), "{e}");
    let e = run(json!({"name": "a", "image": "mesh-test-app", "command": ["/bin/sh"]})).unwrap_err();
    assert!(matches!(e, PlanError::NotInImage { .. }), "{e}");
    let e = run(json!({"name": "a", "image": "mesh-test-app",
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}))
    .unwrap_err();
    assert!(matches!(e, PlanError::UnsupportedEnv { .. }), "{e}");
    let e = run(json!({"name": "a", "image": "mesh-test-app", "securityContext": {"runAsNonRoot": true}})).unwrap_err();
    assert_eq!(e, PlanError::RootNotAllowed { container: "a".into() });
    assert!(run(json!({"name": "a", "image": "mesh-proxy", "securityContext": {"runAsNonRoot": true}})).is_ok());
}

/// Catches capabilities computed wrongly: drop ALL then add exactly two
/// (the mesh's init container), the runtime's defaults otherwise, the
/// pod's UID under the container's; `readOnlyRootFilesystem` ignored or
/// assumed.
#[test]
fn security_context() {
    let p = pod(json!({
        "securityContext": {"runAsUser": 1000, "runAsGroup": 3000},
        "containers": [
            {"name": "init", "image": "mesh-proxy", "securityContext": {"runAsUser": 0, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}}},
            {"name": "app", "image": "mesh-test-app", "securityContext": {"capabilities": {"drop": ["NET_RAW", "CAP_KILL"]}, "allowPrivilegeEscalation": false}},
        ],
    }));
    let plan = plan(&p, &facts(), &images()).unwrap();
    assert_eq!(plan[0].user, (0, 3000));
    assert_eq!(plan[0].caps, ["NET_ADMIN", "NET_RAW"]);
    let args = setpriv_args(&plan[0]).join(" ");
    assert!(args.contains("--inh-caps -all,+net_admin,+net_raw --bounding-set -all,+net_admin,+net_raw"), "{args}");
    assert!(args.contains("--reuid 0 --regid 3000"), "{args}");
    assert_eq!(plan[1].user, (1000, 3000));
    assert_eq!(plan[1].caps.len(), DEFAULT_CAPS.len() - 2);
    assert!(!plan[1].caps.iter().any(|c| c == "NET_RAW" || c == "KILL"));
    assert!(plan[1].no_new_privs);
    assert!(plan[0].read_only_root);
    assert!(!plan[1].read_only_root);
}

/// Catches probes on named ports unresolved and defaults not applied.
#[test]
fn probes_resolve_named_ports_and_defaults() {
    let p = pod(json!({"containers": [{
        "name": "app", "image": "mesh-test-app",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}},
        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2, "failureThreshold": 1},
        "startupProbe": {"httpGet": {"port": "nope"}},
    }]}));
    let e = plan(&p, &facts(), &images()).unwrap_err();
    assert!(matches!(e, PlanError::UnknownPort { .. }), "{e}");
    let mut p = p;
    p.spec.as_mut().unwrap().containers[0].startup_probe = None;
    let c = &plan(&p, &facts(), &images()).unwrap()[0];
    let r = c.readiness.as_ref().unwrap();
    assert_eq!(r.action, ProbeAction::Http { port: 8080, path: "/ready".into() });
    assert_eq!((r.period, r.timeout, r.failure_threshold), (Duration::from_secs(10), Duration::from_secs(1), 3));
    let l = c.liveness.as_ref().unwrap();
    assert_eq!(
        (l.action.clone(), l.period, l.failure_threshold),
        (ProbeAction::Tcp { port: 8080 }, Duration::from_secs(2), 1)
    );
}

#[test]
fn image_keys() {
    assert_eq!(image_key("ghcr.io/org/mesh-proxy:0.1.0"), "mesh-proxy");
    assert_eq!(image_key("localhost:5000/mesh-proxy@sha256:ab"), "mesh-proxy");
    assert_eq!(image_key("mesh-test-app"), "mesh-test-app");
}
