//! The objects of an installation, from [`Values`] (pure).

use super::{CONTROL, IDENTITY_SECRET, PART_OF, PART_OF_VALUE, Values, WEBHOOK};
use crate::crds::mesh_crds;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::ApiResource;
use serde_json::{Value, json};

/// One object to apply: its API resource, whether it is namespaced, and the object.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// Namespaced or cluster-wide.
    pub namespaced: bool,
    /// The object, as it is applied.
    pub object: Value,
}

impl Manifest {
    fn of<K>(namespaced: bool, object: Value) -> Self
    where
        K: kube::Resource<DynamicType = ()>,
    {
        Manifest { resource: ApiResource::erase::<K>(&()), namespaced, object }
    }

    /// `Kind/name` (with the namespace when namespaced), for progress lines.
    pub fn describe(&self) -> String {
        let name = self.object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
        match self.object.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(ns) => format!("{} {ns}/{name}", self.resource.kind),
            None => format!("{} {name}", self.resource.kind),
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
    }
}

fn labels(component: &str) -> Value {
    json!({PART_OF: PART_OF_VALUE, "app.kubernetes.io/name": component, "app.kubernetes.io/managed-by": "meshctl"})
}

fn typed<K: kube::Resource<DynamicType = ()>>(mut object: Value) -> Value {
    object["apiVersion"] = json!(K::api_version(&()));
    object["kind"] = json!(K::kind(&()));
    object
}

/// Every object of an installation, in the order they are applied: the
/// namespace and CRDs first, the webhook last (it must not call a control
/// plane that does not exist yet... it does not matter with `Ignore`, but
/// with `Fail` an early webhook would block the control plane's own pods
/// were its namespace not excluded).
pub fn render(v: &Values) -> Vec<Manifest> {
    let ns = v.namespace.as_str();
    let mut out = vec![Manifest::of::<Namespace>(
        false,
        typed::<Namespace>(json!({"metadata": {"name": ns, "labels": {
            PART_OF: PART_OF_VALUE, "app.kubernetes.io/managed-by": "meshctl", crate::inject::INJECT_ANNOTATION: "disabled"
        }}})),
    )];
    for crd in mesh_crds() {
        let mut object = serde_json::to_value(&crd).unwrap_or(Value::Null);
        object["metadata"]["labels"] = labels("crds");
        out.push(Manifest::of::<CustomResourceDefinition>(false, typed::<CustomResourceDefinition>(object)));
    }
    out.push(Manifest::of::<ServiceAccount>(
        true,
        typed::<ServiceAccount>(json!({"metadata": {"name": CONTROL, "namespace": ns, "labels": labels(CONTROL)}})),
    ));
    out.push(Manifest::of::<ClusterRole>(
        false,
        typed::<ClusterRole>(json!({"metadata": {"name": CONTROL, "labels": labels(CONTROL)}, "rules": rules()})),
    ));
    out.push(Manifest::of::<ClusterRoleBinding>(
        false,
        typed::<ClusterRoleBinding>(json!({
            "metadata": {"name": CONTROL, "labels": labels(CONTROL)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONTROL},
            "subjects": [{"kind": "ServiceAccount", "name": CONTROL, "namespace": ns}]
        })),
    ));
    out.push(Manifest::of::<Secret>(
        true,
        typed::<Secret>(json!({
            "metadata": {"name": IDENTITY_SECRET, "namespace": ns, "labels": labels(CONTROL)},
            "type": "Opaque",
            "stringData": v.identity
        })),
    ));
    out.push(Manifest::of::<Deployment>(true, typed::<Deployment>(control_deployment(v))));
    out.push(Manifest::of::<Service>(
        true,
        typed::<Service>(json!({
            "metadata": {"name": CONTROL, "namespace": ns, "labels": labels(CONTROL)},
            "spec": {
                "selector": {"app.kubernetes.io/name": CONTROL},
                "ports": [
                    {"name": "grpc", "port": 8086, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c"},
                    {"name": "webhook", "port": 443, "targetPort": "webhook"},
                    {"name": "admin", "port": 9990, "targetPort": "admin"}
                ]
            }
        })),
    ));
    out.push(Manifest::of::<MutatingWebhookConfiguration>(false, typed::<MutatingWebhookConfiguration>(webhook(v))));
    out
}

/// What the control plane may do: exactly [`crate::rbac::CONTROL_PLANE`],
/// the table its API calls go through.
fn rules() -> Value {
    let role = crate::rbac::cluster_role(crate::rbac::CONTROL_PLANE);
    serde_json::to_value(role.rules.unwrap_or_default()).unwrap_or(Value::Null)
}

fn control_deployment(v: &Values) -> Value {
    let ns = v.namespace.as_str();
    json!({
        "metadata": {"name": CONTROL, "namespace": ns, "labels": labels(CONTROL)},
        "spec": {
            "replicas": v.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": CONTROL}},
            "template": {
                "metadata": {"labels": labels(CONTROL)},
                "spec": {
                    "serviceAccountName": CONTROL,
                    // fsGroup: the Secret's files are root's; the group lets UID 2103 read them.
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 2103, "runAsGroup": 2103, "fsGroup": 2103,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": CONTROL,
                        "image": format!("{}/mesh-control:{}", v.registry, v.version),
                        "args": [
                            "--registry", "kubernetes",
                            "--identity-dir", "/var/run/mesh/identity",
                            "--webhook-addr", "0.0.0.0:8443",
                            "--proxy-registry", v.registry,
                            "--proxy-version", v.version,
                            "--mesh-namespace", ns
                        ],
                        "env": [{"name": "MESH_LOG", "value": "info"}],
                        "ports": [
                            {"name": "grpc", "containerPort": 8086},
                            {"name": "webhook", "containerPort": 8443},
                            {"name": "admin", "containerPort": 9990}
                        ],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": "admin"}, "periodSeconds": 5},
                        "livenessProbe": {"httpGet": {"path": "/live", "port": "admin"}, "periodSeconds": 10},
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "identity", "mountPath": "/var/run/mesh/identity", "readOnly": true}]
                    }],
                    "volumes": [{"name": "identity", "secret": {"secretName": IDENTITY_SECRET, "defaultMode": 0o440}}]
                }
            }
        }
    })
}

fn webhook(v: &Values) -> Value {
    json!({
        "metadata": {"name": WEBHOOK, "labels": labels(WEBHOOK)},
        "webhooks": [{
            "name": "inject.mesh.dev",
            "clientConfig": {
                "service": {"name": CONTROL, "namespace": v.namespace, "path": "/inject", "port": 443},
                "caBundle": k8s_openapi::ByteString(v.anchors_pem.as_bytes().to_vec())
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": ["kube-system", "kube-public", "kube-node-lease", v.namespace]},
                {"key": crate::inject::INJECT_ANNOTATION, "operator": "NotIn", "values": ["disabled"]}
            ]},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": v.failure_policy.as_str(),
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 10
        }]
    })
}

/// The manifests as YAML documents (valid `kubectl apply -f -` input).
pub fn to_yaml(manifests: &[Manifest]) -> Result<String, crate::KubeError> {
    let objects: Vec<&Value> = manifests.iter().map(|m| &m.object).collect();
    serde_saphyr::to_string_multiple(&objects)
        .map_err(|e| crate::KubeError::Render { what: "the installation manifests".into(), message: e.to_string() })
}
