//! The probe rewrite (see [`super::probes`]) as a pure function.

use super::probes::APP_PROBES_ENV;
use super::*;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

fn config() -> InjectConfig {
    InjectConfig::new("registry.test/mesh", "0.1.0", "mesh-system", "-----BEGIN CERTIFICATE-----\n".into())
}

fn probed_pod(annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "annotations": annotations},
        "spec": {"containers": [
            {"name": "web", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}],
             "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTPS",
                                           "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                               "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 4},
             "readinessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 3},
             "startupProbe": {"exec": {"command": ["cat", "/tmp/started"]}}},
            {"name": "side", "image": "side:1",
             "livenessProbe": {"httpGet": {"path": "/", "port": 80, "host": "example.com"}},
             "readinessProbe": {"grpc": {"port": 9000}},
             "startupProbe": {"httpGet": {"path": "/", "port": "missing"}}}
        ]}
    }))
    .expect("a pod")
}

fn inject(p: &Pod) -> (Pod, Injection) {
    let spec = p.spec.clone().expect("spec");
    let ns = NamespaceInfo { name: "shop".into(), ..Default::default() };
    let injection = plan(&p.metadata, &spec, &ns, &config(), OptIn::Unless).expect("valid").expect("injected");
    let mut doc = serde_json::to_value(p).expect("json");
    apply_patch(&mut doc, &injection.patch("", &p.metadata, &spec)).expect("applies");
    (serde_json::from_value(doc).expect("a pod"), injection)
}

fn env(p: &Pod) -> Option<Vec<Value>> {
    let proxy = p.spec.as_ref()?.init_containers.as_ref()?.iter().find(|c| c.name == PROXY_CONTAINER)?;
    let v = proxy.env.iter().flatten().find(|e| e.name == APP_PROBES_ENV)?.value.clone()?;
    Some(serde_json::from_str(&v).expect("the variable is JSON"))
}

fn probe(p: &Pod, container: usize, field: &str) -> Value {
    serde_json::to_value(&p.spec.as_ref().expect("spec").containers[container]).expect("json")[field].clone()
}

/// Catches a rewrite that loses the probe's timings, leaves `tcpSocket`
/// next to the new `httpGet` (the API server refuses two handlers), does not
/// resolve a named port for the proxy, records something other than the
/// original, or touches probes the proxy cannot perform (exec, gRPC, another
/// host, an undeclared port name).
#[test]
fn http_and_tcp_probes_go_to_the_admin_port_and_the_originals_are_recorded() {
    let before = probed_pod(Value::Null);
    let (after, injection) = inject(&before);
    assert_eq!(
        probe(&after, 0, "livenessProbe"),
        json!({"httpGet": {"path": "/app-health/web/liveness", "port": 4191},
               "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 4})
    );
    assert_eq!(
        probe(&after, 0, "readinessProbe"),
        json!({"httpGet": {"path": "/app-health/web/readiness", "port": 4191}, "initialDelaySeconds": 3})
    );
    for (c, field) in [(0, "startupProbe"), (1, "livenessProbe"), (1, "readinessProbe"), (1, "startupProbe")] {
        assert_eq!(probe(&after, c, field), probe(&before, c, field), "container {c} {field} is left alone");
    }
    assert_eq!(injection.probe_rewrites.len(), 2);

    let entries = env(&after).expect("the proxy gets the originals");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["path"], "/app-health/web/liveness");
    assert_eq!(entries[0]["port"], 8080, "the named port resolved from the container's ports");
    assert_eq!(entries[0]["probe"], probe(&before, 0, "livenessProbe"), "the original, verbatim");
    assert_eq!(entries[1]["path"], "/app-health/web/readiness");
    assert_eq!(entries[1]["probe"], probe(&before, 0, "readinessProbe"));
}

/// Catches an uninject that does not restore the probes, restores them
/// into the wrong container, or overwrites a probe the user changed after
/// injection.
#[test]
fn uninject_restores_the_originals_but_not_over_a_later_change() {
    let before = probed_pod(Value::Null);
    let (after, _) = inject(&before);
    let mut doc = serde_json::to_value(&after).expect("json");
    let spec = after.spec.clone().expect("spec");
    apply_patch(&mut doc, &uninject_patch("", &after.metadata, &spec)).expect("applies");
    assert_eq!(doc, serde_json::to_value(&before).expect("json"), "exactly the input again");

    let mut changed = after.clone();
    let edited: k8s_openapi::api::core::v1::Probe =
        serde_json::from_value(json!({"tcpSocket": {"port": 9999}})).expect("probe");
    changed.spec.as_mut().expect("spec").containers[0].readiness_probe = Some(edited);
    let mut doc = serde_json::to_value(&changed).expect("json");
    let spec = changed.spec.clone().expect("spec");
    apply_patch(&mut doc, &uninject_patch("", &changed.metadata, &spec)).expect("applies");
    assert_eq!(doc.pointer("/spec/containers/0/readinessProbe"), Some(&json!({"tcpSocket": {"port": 9999}})));
    assert_eq!(doc.pointer("/spec/containers/0/livenessProbe"), Some(&probe(&before, 0, "livenessProbe")));
}

/// Catches an opt-out that is ignored (or read loosely) and a pod without
/// rewritable probes getting an empty variable.
#[test]
fn the_annotation_opts_out_and_a_pod_without_probes_gets_no_variable() {
    let (after, injection) = inject(&probed_pod(json!({"config.mesh.dev/rewrite-app-probes": "false"})));
    assert!(injection.probe_rewrites.is_empty());
    assert_eq!(env(&after), None);
    assert_eq!(probe(&after, 0, "livenessProbe")["httpGet"]["port"], "http");

    let mut plain = probed_pod(Value::Null);
    for c in &mut plain.spec.as_mut().expect("spec").containers {
        (c.liveness_probe, c.readiness_probe, c.startup_probe) = (None, None, None);
    }
    assert_eq!(env(&inject(&plain).0), None);

    let bad = probed_pod(json!({"config.mesh.dev/rewrite-app-probes": "no"}));
    let spec = bad.spec.clone().expect("spec");
    let ns = NamespaceInfo { name: "shop".into(), ..Default::default() };
    let err = plan(&bad.metadata, &spec, &ns, &config(), OptIn::Unless).expect_err("refused");
    assert!(err.to_string().contains("rewrite-app-probes") && err.to_string().contains("\"false\""), "{err}");
}
