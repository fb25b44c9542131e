use super::manifests::{Mode, rewrite};
use super::*;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

fn config() -> InjectConfig {
    InjectConfig::new(
        "registry.test/mesh",
        "0.1.0",
        "mesh-system",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
    )
}

fn ns(name: &str, label: Option<&str>) -> NamespaceInfo {
    let mut info = NamespaceInfo { name: name.into(), ..Default::default() };
    if let Some(v) = label {
        info.labels.insert(INJECT_ANNOTATION.into(), v.into());
    }
    info
}

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("a pod")
}

fn app_pod() -> Pod {
    pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}]}
    }))
}

fn decide(p: &Pod, namespace: &NamespaceInfo, opt_in: OptIn) -> Result<Injection, Skip> {
    let spec = p.spec.clone().expect("spec");
    plan(&p.metadata, &spec, namespace, &config(), opt_in).expect("valid annotations")
}

/// Applies the webhook's patch to a pod, as the API server does.
fn injected(p: &Pod, namespace: &NamespaceInfo) -> Pod {
    let spec = p.spec.clone().expect("spec");
    let injection = decide(p, namespace, OptIn::Marked).expect("injected");
    let mut doc = serde_json::to_value(p).expect("json");
    apply_patch(&mut doc, &injection.patch("", &p.metadata, &spec)).expect("patch applies");
    pod(doc)
}

/// Catches a sidecar that is not native (a regular container, or no
/// `restartPolicy: Always`), an init step after the proxy, a probe on the
/// wrong endpoint, or a security context that grants more than it should.
#[test]
fn an_opted_in_pod_gets_the_init_step_and_a_native_sidecar_with_least_privilege() {
    let out = injected(&app_pod(), &ns("shop", Some("enabled")));
    let spec = out.spec.expect("spec");
    let inits = spec.init_containers.expect("init containers");
    assert_eq!(inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), [INIT_CONTAINER, PROXY_CONTAINER]);
    assert_eq!(spec.containers.len(), 1, "the app's containers are untouched");

    let init = &inits[0];
    assert_eq!(init.args.as_ref().expect("args")[0], "init");
    let caps = init.security_context.as_ref().and_then(|s| s.capabilities.clone()).expect("capabilities");
    assert_eq!(caps.add, Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]));
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(init.restart_policy, None, "the init step runs once");

    let proxy = &inits[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let probe = proxy.startup_probe.as_ref().and_then(|p| p.http_get.clone()).expect("startup probe");
    assert_eq!(probe.path.as_deref(), Some("/ready"));
    let sc = proxy.security_context.clone().expect("security context");
    assert_eq!(sc.run_as_user, Some(2102));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.and_then(|c| c.add), None, "the proxy gets no capability");
    let requests = proxy.resources.as_ref().and_then(|r| r.requests.clone()).expect("requests");
    assert_eq!(requests["cpu"].0, "100m");
    assert_eq!(requests["memory"].0, "20Mi");

    let env: std::collections::BTreeMap<_, _> =
        proxy.env.iter().flatten().map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default())).collect();
    assert_eq!(env["MESH_CONTROL_PLANE"], "https://mesh-control.mesh-system.svc:8086");
    assert!(env["MESH_TRUST_ANCHORS_PEM"].starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(env["MESH_IDENTITY_TOKEN_FILE"], "/var/run/mesh/identity/token");
    assert_eq!(env["MESH_TRANSPARENT"], "true");
    assert_eq!(env["MESH_IDENTITY"], "spiffe://cluster.local/ns/$(MESH_POD_NAMESPACE)/sa/$(MESH_SERVICE_ACCOUNT)");
    let position = |name: &str| proxy.env.iter().flatten().position(|e| e.name == name).expect(name);
    assert!(
        position("MESH_POD_NAMESPACE") < position("MESH_IDENTITY"),
        "Kubernetes expands $(VAR) only from earlier variables"
    );

    let volumes = spec.volumes.expect("volumes");
    let token = volumes.iter().find(|v| v.name == "mesh-identity-token").expect("token volume");
    let projection = token.projected.as_ref().and_then(|p| p.sources.clone()).expect("sources")[0]
        .service_account_token
        .clone()
        .expect("a service-account token");
    assert_eq!(projection.audience.as_deref(), Some("mesh"));
    assert_eq!(out.metadata.annotations.expect("annotations")[INJECTED_ANNOTATION], "0.1.0");
}

/// Catches an injector that decides from the namespace alone, ignores a
/// pod's opt-out, or injects pods it must leave alone.
#[test]
fn who_is_injected() {
    let plain = app_pod();
    assert_eq!(decide(&plain, &ns("shop", None), OptIn::Marked), Err(Skip::NotEnabled));
    assert!(decide(&plain, &ns("shop", Some("enabled")), OptIn::Marked).is_ok());
    assert!(decide(&plain, &ns("shop", None), OptIn::Unless).is_ok(), "meshctl inject needs no mark");

    let mut annotated = app_pod();
    annotated.metadata.annotations = Some([(INJECT_ANNOTATION.to_string(), "enabled".to_string())].into());
    assert!(decide(&annotated, &ns("shop", None), OptIn::Marked).is_ok(), "a pod opts in on its own");
    let mut by_ns_annotation = ns("shop", None);
    by_ns_annotation.annotations.insert(INJECT_ANNOTATION.into(), "enabled".into());
    assert!(decide(&plain, &by_ns_annotation, OptIn::Marked).is_ok(), "a namespace annotation opts in too");

    let mut opted_out = app_pod();
    opted_out.metadata.annotations = Some([(INJECT_ANNOTATION.to_string(), "disabled".to_string())].into());
    assert_eq!(decide(&opted_out, &ns("shop", Some("enabled")), OptIn::Marked), Err(Skip::Disabled));
    assert_eq!(decide(&opted_out, &ns("shop", None), OptIn::Unless), Err(Skip::Disabled));

    let mut host = app_pod();
    host.spec.as_mut().expect("spec").host_network = Some(true);
    assert_eq!(decide(&host, &ns("shop", Some("enabled")), OptIn::Marked), Err(Skip::HostNetwork));
    for system in ["kube-system", "mesh-system"] {
        assert_eq!(decide(&plain, &ns(system, Some("enabled")), OptIn::Unless), Err(Skip::Namespace(system.into())));
    }
}

/// Catches a second injection adding a second proxy (the API server may
/// call the webhook again on reinvocation; `meshctl inject` output may be
/// applied to an injecting namespace).
#[test]
fn injecting_twice_is_a_no_op() {
    let namespace = ns("shop", Some("enabled"));
    let once = injected(&app_pod(), &namespace);
    assert_eq!(decide(&once, &namespace, OptIn::Marked), Err(Skip::AlreadyInjected));
}

/// Catches an injector that overwrites or reorders the pod's own init
/// containers, volumes or annotations (its migrations would run before
/// iptables, or disappear).
#[test]
fn the_pods_own_init_containers_volumes_and_annotations_are_kept_after_ours() {
    let p = pod(json!({
        "metadata": {"name": "db-0", "annotations": {"team": "data", "a/b~c": "x"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "db:1"}],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "db", "image": "db:1"}]
        }
    }));
    let out = injected(&p, &ns("shop", Some("enabled")));
    let spec = out.spec.expect("spec");
    let names: Vec<_> = spec.init_containers.iter().flatten().map(|c| c.name.clone()).collect();
    assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
    let volumes: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.clone()).collect();
    assert_eq!(volumes, ["data", "mesh-identity-token", "mesh-init-xtables-lock"]);
    let annotations = out.metadata.annotations.expect("annotations");
    assert_eq!(annotations["team"], "data");
    assert_eq!(annotations["a/b~c"], "x");
    assert_eq!(annotations[INJECTED_ANNOTATION], "0.1.0");
}

/// Catches annotations that are read loosely: a typo'd key, a port out of
/// range or a malformed quantity must be refused with the annotation named,
/// and valid overrides must reach the containers.
#[test]
fn annotations_override_strictly() {
    let mut p = app_pod();
    p.metadata.annotations = Some(
        [
            ("config.mesh.dev/skip-inbound-ports", "9000,8000-8002"),
            ("config.mesh.dev/skip-outbound-ports", "3306"),
            ("config.mesh.dev/opaque-ports", "5432"),
            ("config.mesh.dev/proxy-cpu-request", "250m"),
            ("config.mesh.dev/proxy-memory-limit", "1Gi"),
            ("config.mesh.dev/proxy-log-level", "warn,mesh_proxy=debug"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
    );
    let injection = decide(&p, &ns("shop", Some("enabled")), OptIn::Marked).expect("injected");
    let args = injection.init_containers[0].args.clone().expect("args");
    let after = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    assert_eq!(after("--skip-inbound-ports").as_deref(), Some("8000,8001,8002,9000"));
    assert_eq!(after("--skip-outbound-ports").as_deref(), Some("3306"));
    let proxy = &injection.init_containers[1];
    let env = |name: &str| proxy.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.clone());
    assert_eq!(env("MESH_OPAQUE_PORTS").as_deref(), Some("5432"));
    assert_eq!(env("MESH_LOG").as_deref(), Some("warn,mesh_proxy=debug"));
    let resources = proxy.resources.clone().expect("resources");
    assert_eq!(resources.requests.expect("requests")["cpu"].0, "250m");
    assert_eq!(resources.limits.expect("limits")["memory"].0, "1Gi");

    for (key, value, names) in [
        ("config.mesh.dev/skip-inbound-ports", "80,http", "not a port"),
        ("config.mesh.dev/skip-inbound-ports", "0", "not a port"),
        ("config.mesh.dev/skip-outbound-ports", "9000-8000", "not a port"),
        ("config.mesh.dev/proxy-memory-request", "lots", "quantity"),
        ("config.mesh.dev/proxy-log-level", "verbose", "log filter"),
        ("config.mesh.dev/proxy-cpu-requests", "1", "unknown annotation"),
        (INJECT_ANNOTATION, "yes", "`enabled` or `disabled`"),
    ] {
        let mut bad = app_pod();
        bad.metadata.annotations = Some([(key.to_string(), value.to_string())].into());
        let spec = bad.spec.clone().expect("spec");
        let err = plan(&bad.metadata, &spec, &ns("shop", Some("enabled")), &config(), OptIn::Marked)
            .expect_err(&format!("{key}={value} is refused"));
        assert_eq!(err.annotation, key);
        assert!(err.to_string().contains(names), "{err}");
    }
}

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: "web:1"
        ports: [{name: http, containerPort: 8080}]
        livenessProbe:
          httpGet: {path: /healthz, port: http, httpHeaders: [{name: X-Probe, value: "1"}]}
          periodSeconds: 5
          timeoutSeconds: 2
        readinessProbe: {tcpSocket: {port: 8080}, initialDelaySeconds: 3}
        startupProbe: {exec: {command: [cat, /tmp/started]}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}, annotations: {team: data}}
    spec:
      initContainers: [{name: migrate, image: "db:1"}]
      containers: [{name: db, image: "db:1"}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: "agent:1"}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec: {restartPolicy: Never, containers: [{name: once, image: "job:1"}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: nightly}}
        spec:
          restartPolicy: OnFailure
          containers: [{name: nightly, image: "job:1", startupProbe: {httpGet: {port: 9090, scheme: HTTPS}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: bare}
spec: {containers: [{name: bare, image: "bare:1"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, targetPort: 8080}], selector: {app: web}}
"#;

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).expect("yaml").into_iter().filter(|d| !d.is_null()).collect()
}

/// Catches a kind whose pod template is looked for in the wrong place (it
/// would pass through uninjected), and an `uninject` that leaves pieces
/// behind or removes the workload's own: `inject | uninject` must give back
/// the input objects (app probes restored exactly, named ports and all),
/// and the injected templates must carry the proxy and rewritten probes.
#[test]
fn inject_then_uninject_gives_back_every_workload_kind() {
    let (out, outcomes) = rewrite(WORKLOADS, Mode::Inject, &config()).expect("injects");
    assert_eq!(outcomes.len(), 6, "six objects hold pod templates: {outcomes:?}");
    assert!(outcomes.iter().all(|o| o.skipped.is_none()), "{outcomes:?}");
    let injected = documents(&out);
    for (doc, pointer) in injected.iter().zip([
        "/spec/template/spec",
        "/spec/template/spec",
        "/spec/template/spec",
        "/spec/template/spec",
        "/spec/jobTemplate/spec/template/spec",
        "/spec",
    ]) {
        let spec: k8s_openapi::api::core::v1::PodSpec =
            serde_json::from_value(doc.pointer(pointer).expect("template").clone()).expect("a pod spec");
        assert!(already_injected(&spec), "{} was not injected", doc["kind"]);
    }
    assert_eq!(injected[6], documents(WORKLOADS)[6], "a Service passes through");
    let web = &injected[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(web["livenessProbe"]["httpGet"], json!({"path": "/app-health/web/liveness", "port": 4191}));
    assert_eq!(web["readinessProbe"]["httpGet"]["path"], "/app-health/web/readiness");
    assert_eq!(
        web["startupProbe"],
        documents(WORKLOADS)[0]["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    );
    let nightly = injected[4].pointer("/spec/jobTemplate/spec/template/spec/containers/0/startupProbe/httpGet/path");
    assert_eq!(nightly, Some(&json!("/app-health/nightly/startup")));

    let (again, second) = rewrite(&out, Mode::Inject, &config()).expect("re-injects");
    assert!(second.iter().all(|o| o.skipped.is_some()), "a second inject changes nothing: {second:?}");
    assert_eq!(documents(&again), injected);

    let (back, _) = rewrite(&out, Mode::Uninject, &config()).expect("uninjects");
    assert_eq!(documents(&back), documents(WORKLOADS));
}

/// Catches a `List` (what `kubectl get -o yaml` prints) passing through uninjected.
#[test]
fn a_list_is_injected_item_by_item() {
    let list = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a}
  spec: {containers: [{name: a, image: "a:1"}]}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c}
  data: {k: v}
"#;
    let (out, outcomes) = rewrite(list, Mode::Inject, &config()).expect("injects");
    assert_eq!(outcomes.len(), 1);
    let doc = &documents(&out)[0];
    assert_eq!(doc.pointer("/items/0/spec/initContainers/1/name"), Some(&json!(PROXY_CONTAINER)));
    let (back, _) = rewrite(&out, Mode::Uninject, &config()).expect("uninjects");
    assert_eq!(documents(&back), documents(list));
}

/// Catches errors that do not say where: a bad annotation and a malformed
/// template name the document and the object.
#[test]
fn bad_manifests_are_refused_naming_the_document_and_object() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: a, image: a}]}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\n  annotations: {config.mesh.dev/opaque-ports: \"99999\"}\nspec: {containers: [{name: a, image: a}]}\n";
    let err = rewrite(yaml, Mode::Inject, &config()).expect_err("refused").to_string();
    assert!(err.contains("document 2 (Pod/bad)") && err.contains("config.mesh.dev/opaque-ports"), "{err}");
    let err =
        rewrite("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n", Mode::Inject, &config())
            .expect_err("refused")
            .to_string();
    assert!(err.contains("document 1 (Pod/p)") && err.contains("not a valid pod"), "{err}");
    assert!(rewrite("a: [", Mode::Inject, &config()).expect_err("not yaml").to_string().contains("not valid YAML"));
}

/// Catches a patch applier that ignores bad pointers (the offline path would
/// silently drop a container).
#[test]
fn patches_fail_on_paths_that_do_not_exist() {
    let mut doc = json!({"spec": {"volumes": []}});
    assert!(apply_patch(&mut doc, &[PatchOp::Add { path: "/spec/missing/0".into(), value: json!(1) }]).is_err());
    assert!(apply_patch(&mut doc, &[PatchOp::Add { path: "/spec/volumes/2".into(), value: json!(1) }]).is_err());
    assert!(apply_patch(&mut doc, &[PatchOp::Remove { path: "/spec/volumes/0".into() }]).is_err());
    apply_patch(&mut doc, &[PatchOp::Add { path: "/spec/volumes/-".into(), value: json!(1) }]).expect("appends");
    assert_eq!(doc, json!({"spec": {"volumes": [1]}}));
    let op = serde_json::to_value(PatchOp::Remove { path: "/a".into() }).expect("json");
    assert_eq!(op, json!({"op": "remove", "path": "/a"}));
}
