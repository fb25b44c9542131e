use super::*;

fn values() -> Values {
    Values {
        namespace: "mesh-system".into(),
        registry: "registry.test/mesh".into(),
        version: "1.2.3".into(),
        identity: BTreeMap::from([("trust-domain".into(), "cluster.local\n".into())]),
        anchors_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        failure_policy: FailurePolicy::Ignore,
        replicas: 1,
    }
}

/// Catches an object uninstall could not find (no part-of label) or one
/// applied before what it needs (the webhook before the control plane, a
/// namespaced object before its namespace).
#[test]
fn every_object_is_labelled_and_ordered() {
    let manifests = render(&values());
    let kinds: Vec<&str> = manifests.iter().map(|m| m.resource.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"Namespace"));
    assert_eq!(kinds.last(), Some(&"MutatingWebhookConfiguration"));
    for m in &manifests {
        assert_eq!(
            m.object.pointer(&format!("/metadata/labels/{}", PART_OF.replace('/', "~1"))).and_then(|v| v.as_str()),
            Some(PART_OF_VALUE),
            "{} carries the part-of label",
            m.describe()
        );
        assert_eq!(m.object["kind"], m.resource.kind.as_str());
        if m.namespaced {
            assert_eq!(m.object.pointer("/metadata/namespace").and_then(|v| v.as_str()), Some("mesh-system"));
        }
    }
}

/// Catches a webhook that could inject the mesh's own pods or system pods,
/// or whose CA bundle is not the trust anchors (the API server would refuse
/// the control plane's certificate).
#[test]
fn the_webhook_skips_system_namespaces_and_trusts_the_anchors() {
    let manifests = render(&values());
    let hook = &manifests.last().expect("webhook").object["webhooks"][0];
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0]["values"];
    for ns in ["kube-system", "mesh-system"] {
        assert!(excluded.as_array().expect("values").iter().any(|v| v == ns), "{ns} excluded");
    }
    let bundle: k8s_openapi::ByteString =
        serde_json::from_value(hook["clientConfig"]["caBundle"].clone()).expect("base64");
    assert_eq!(bundle.0, values().anchors_pem.as_bytes());
    assert_eq!(hook["failurePolicy"], "Ignore");
}

/// Catches YAML that `kubectl apply` would not read back as the same objects.
#[test]
fn the_yaml_reads_back_as_the_objects() {
    let manifests = render(&values());
    let yaml = to_yaml(&manifests).expect("yaml");
    let back: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).expect("parses");
    let back: Vec<_> = back.into_iter().filter(|d| !d.is_null()).collect();
    assert_eq!(back, manifests.iter().map(|m| m.object.clone()).collect::<Vec<_>>());
}

/// Catches a control plane that cannot read its own identity: Secret files
/// are owned by root, so the non-root UID needs them group-readable through
/// fsGroup (a 0400 mode, or no fsGroup, leaves it unable to start).
#[test]
fn the_control_plane_can_read_its_identity_secret() {
    let manifests = render(&values());
    let deployment = manifests.iter().find(|m| m.resource.kind == "Deployment").expect("deployment");
    let pod = &deployment.object["spec"]["template"]["spec"];
    let (uid, fs_group) = (&pod["securityContext"]["runAsUser"], &pod["securityContext"]["fsGroup"]);
    assert_ne!(uid.as_i64(), Some(0), "the control plane runs as non-root");
    assert_eq!(fs_group, &pod["securityContext"]["runAsGroup"], "the Secret's group is the process's");
    let mode = pod["volumes"][0]["secret"]["defaultMode"].as_i64().expect("a mode");
    assert_eq!(mode & 0o040, 0o040, "group-readable");
    assert_eq!(mode & 0o007, 0, "not world-readable");
}
