//! Reading the cluster for `meshctl check` (the I/O half).

use super::Check;
use super::rules::{self, MeshedPod};
use crate::install::{CONTROL, IDENTITY_SECRET, Manifest, WEBHOOK};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

const API: &str = "Kubernetes API";

async fn api_version(client: &Client) -> Check {
    match client.apiserver_version().await {
        Ok(v) => Check::from(API, rules::native_sidecars(&v.major, &v.minor)),
        Err(e) => {
            Check::fail(API, format!("unreachable: {e}"), "check --kubeconfig/--context and that the cluster is up")
        }
    }
}

/// Checks before `meshctl install`: the API (and native sidecars), the
/// permissions install needs, and no other mesh's injector.
pub async fn pre_install(client: &Client, manifests: &[Manifest]) -> Vec<Check> {
    let api = api_version(client).await;
    if !api.ok {
        return vec![api];
    }
    let mut out = vec![api];
    let mut denied = Vec::new();
    for m in manifests {
        for verb in ["create", "patch"] {
            let review: SelfSubjectAccessReview = match serde_json::from_value(json!({"spec": {"resourceAttributes": {
                "group": m.resource.group, "resource": m.resource.plural, "verb": verb,
                "namespace": m.object.pointer("/metadata/namespace"), "name": m.name()
            }}})) {
                Ok(r) => r,
                Err(_) => continue,
            };
            let allowed = Api::<SelfSubjectAccessReview>::all(client.clone())
                .create(&PostParams::default(), &review)
                .await
                .ok()
                .and_then(|r| r.status)
                .is_some_and(|s| s.allowed);
            if !allowed {
                denied.push(format!("{verb} {}", m.describe()));
            }
        }
    }
    out.push(if denied.is_empty() {
        Check::pass("permissions", format!("may create and patch all {} objects install applies", manifests.len()))
    } else {
        Check::fail(
            "permissions",
            format!("not allowed: {}", denied.join(", ")),
            "install needs cluster-admin (or a role with these verbs)",
        )
    });
    out.push(other_meshes(client).await);
    out
}

async fn other_meshes(client: &Client) -> Check {
    const NAME: &str = "other meshes";
    match Api::<MutatingWebhookConfiguration>::all(client.clone()).list(&ListParams::default()).await {
        Ok(list) => {
            let hooks: Vec<(String, Vec<String>)> = list
                .items
                .iter()
                .filter(|c| c.name_any() != WEBHOOK)
                .map(|c| (c.name_any(), c.webhooks.iter().flatten().map(|w| w.name.clone()).collect()))
                .collect();
            Check::from(NAME, rules::other_meshes(&hooks))
        }
        Err(e) => Check::fail(
            NAME,
            format!("cannot list webhook configurations: {e}"),
            "grant list on mutatingwebhookconfigurations",
        ),
    }
}

/// Which workloads the live probe runs between (chosen when `None`).
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// The source pod, `namespace/name`.
    pub from: Option<String>,
    /// The target Service port, `name.namespace:port`.
    pub to: Option<String>,
}

/// Checks of an installation in `namespace` at `version`, rendered as
/// `manifests`; last, the live probe through the data plane between two
/// meshed workloads (see ARCHITECTURE.md, "The live probe").
pub async fn installed(
    client: &Client,
    namespace: &str,
    version: &str,
    manifests: &[Manifest],
    probe: &Probe,
) -> Vec<Check> {
    let api = api_version(client).await;
    if !api.ok {
        return vec![api];
    }
    let mut out = vec![api, crds(client, manifests).await, control_plane(client, namespace).await];
    let secret = identity_secret(client, namespace).await;
    out.push(match &secret {
        Ok(s) => Check::from("issuer", rules::issuer(s, SystemTime::now(), Duration::from_secs(30 * 86_400))),
        Err(e) => Check::fail("issuer", e.clone(), "run `meshctl install`"),
    });
    out.push(webhook(client, secret.as_ref().ok()).await);
    out.push(proxies(client, version).await);
    out.push(super::live::live_probe(client, probe.from.as_deref(), probe.to.as_deref()).await);
    out
}

async fn crds(client: &Client, manifests: &[Manifest]) -> Check {
    let ours: BTreeMap<String, serde_json::Value> = manifests
        .iter()
        .filter(|m| m.resource.kind == "CustomResourceDefinition")
        .map(|m| (m.name().to_string(), m.object.pointer("/spec/versions").cloned().unwrap_or_default()))
        .collect();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut installed = BTreeMap::new();
    for name in ours.keys() {
        if let Ok(Some(crd)) = api.get_opt(name).await {
            let stored = serde_json::to_value(&crd.spec.versions).unwrap_or_default();
            installed.insert(name.clone(), stored);
        }
    }
    // The API server may add defaults to a stored schema: compare what we
    // render against the stored versions with our fields only.
    let installed = installed
        .into_iter()
        .map(|(name, stored)| {
            let projected = ours.get(&name).map(|o| project(&stored, o)).unwrap_or(stored);
            (name, projected)
        })
        .collect();
    Check::from("CRDs", rules::crds_current(&installed, &ours))
}

/// `stored` restricted to the keys present in `shape` (recursively).
fn project(stored: &serde_json::Value, shape: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (stored, shape) {
        (Value::Object(s), Value::Object(o)) => {
            Value::Object(o.keys().filter_map(|k| s.get(k).map(|v| (k.clone(), project(v, &o[k])))).collect())
        }
        (Value::Array(s), Value::Array(o)) if s.len() == o.len() => {
            Value::Array(s.iter().zip(o).map(|(a, b)| project(a, b)).collect())
        }
        _ => stored.clone(),
    }
}

async fn control_plane(client: &Client, namespace: &str) -> Check {
    const NAME: &str = "control plane";
    match Api::<Deployment>::namespaced(client.clone(), namespace).get_opt(CONTROL).await {
        Ok(Some(d)) => {
            let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            if ready >= want && ready > 0 {
                Check::pass(NAME, format!("{ready}/{want} replicas ready"))
            } else {
                Check::fail(
                    NAME,
                    format!("{ready}/{want} replicas ready"),
                    format!(
                        "see `kubectl -n {namespace} describe deploy/{CONTROL}` and `kubectl -n {namespace} logs deploy/{CONTROL}`"
                    ),
                )
            }
        }
        Ok(None) => Check::fail(NAME, format!("no Deployment {namespace}/{CONTROL}"), "run `meshctl install`"),
        Err(e) => Check::fail(NAME, format!("cannot read it: {e}"), "check your permissions"),
    }
}

async fn identity_secret(client: &Client, namespace: &str) -> Result<BTreeMap<String, String>, String> {
    match Api::<Secret>::namespaced(client.clone(), namespace).get_opt(IDENTITY_SECRET).await {
        Ok(Some(s)) => Ok(s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect()),
        Ok(None) => Err(format!("no Secret {namespace}/{IDENTITY_SECRET}")),
        Err(e) => Err(format!("cannot read Secret {namespace}/{IDENTITY_SECRET}: {e}")),
    }
}

/// The webhook is registered with the anchors as its CA, and the API server
/// really gets a sidecar from it: a server-side dry run of an opted-in pod.
async fn webhook(client: &Client, secret: Option<&BTreeMap<String, String>>) -> Check {
    const NAME: &str = "injector webhook";
    let config = match Api::<MutatingWebhookConfiguration>::all(client.clone()).get_opt(WEBHOOK).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Check::fail(NAME, format!("no MutatingWebhookConfiguration {WEBHOOK}"), "run `meshctl install`");
        }
        Err(e) => return Check::fail(NAME, format!("cannot read it: {e}"), "check your permissions"),
    };
    let bundle = config.webhooks.iter().flatten().next().and_then(|w| w.client_config.ca_bundle.clone());
    let anchors = secret.and_then(|s| s.get(mesh_identity::dir::ANCHORS));
    if bundle.as_ref().map(|b| b.0.as_slice()) != anchors.map(|a| a.as_bytes()) {
        return Check::fail(NAME, "its caBundle is not the mesh's trust anchors", "run `meshctl install` again");
    }
    let probe: Pod = match serde_json::from_value(json!({
        "metadata": {"generateName": "meshctl-check-", "annotations": {crate::inject::INJECT_ANNOTATION: "enabled"}},
        "spec": {"containers": [{"name": "probe", "image": "meshctl-check"}]}
    })) {
        Ok(p) => p,
        Err(e) => return Check::fail(NAME, e.to_string(), "a bug in meshctl"),
    };
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    match Api::<Pod>::namespaced(client.clone(), "default").create(&dry_run, &probe).await {
        Ok(pod) if pod.spec.as_ref().is_some_and(crate::inject::already_injected) => {
            Check::pass(NAME, "reachable: a dry-run pod got the sidecar")
        }
        Ok(_) => Check::fail(
            NAME,
            "a dry-run pod was admitted without the sidecar (the API server could not reach the injector)",
            "check the control plane's pods and that the API server can reach its Service on port 443",
        ),
        Err(e) => Check::fail(NAME, format!("a dry-run pod was refused: {e}"), "see the control plane's logs"),
    }
}

async fn proxies(client: &Client, version: &str) -> Check {
    const NAME: &str = "meshed proxies";
    let list = match Api::<Pod>::all(client.clone()).list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) => return Check::fail(NAME, format!("cannot list pods: {e}"), "check your permissions"),
    };
    let pods: Vec<MeshedPod> = list
        .items
        .iter()
        .filter_map(|p| {
            let proxy =
                p.spec.as_ref()?.init_containers.as_ref()?.iter().find(|c| c.name == crate::inject::PROXY_CONTAINER)?;
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .and_then(|st| st.iter().find(|s| s.name == crate::inject::PROXY_CONTAINER))
                .is_some_and(|s| s.ready);
            Some(MeshedPod {
                name: format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                image: proxy.image.clone().unwrap_or_default(),
                ready,
            })
        })
        .collect();
    Check::from(NAME, rules::proxies(&pods, version))
}
