//! Applying an installation, waiting for it, and removing it (the I/O half
//! of `meshctl install` / `uninstall`).

use super::{CONTROL, IDENTITY_SECRET, Manifest, PART_OF, PART_OF_VALUE};
use crate::KubeError;
use crate::crds::FIELD_MANAGER;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A progress line: what was done to which object.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

fn api(client: &Client, m: &Manifest, namespace: Option<&str>) -> Api<DynamicObject> {
    match (m.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &m.resource),
        _ => Api::all_with(client.clone(), &m.resource),
    }
}

fn kube_err(what: String) -> impl FnOnce(kube::Error) -> KubeError {
    move |source| KubeError::Api { what, source }
}

/// Server-side applies every manifest in order as the mesh's field manager
/// (forcing ownership: the installation owns these fields), waiting for the
/// CRDs to be Established before anything that may use them.
pub async fn apply(client: &Client, manifests: &[Manifest], progress: Progress<'_>) -> Result<(), KubeError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut crds = Vec::new();
    for m in manifests {
        let namespace = m.object.pointer("/metadata/namespace").and_then(|v| v.as_str());
        let object: DynamicObject = serde_json::from_value(m.object.clone())
            .map_err(|e| KubeError::Render { what: m.describe(), message: e.to_string() })?;
        api(client, m, namespace)
            .patch(m.name(), &params, &Patch::Apply(&object))
            .await
            .map_err(kube_err(format!("applying {}", m.describe())))?;
        progress(&format!("✔ {} applied", m.describe()));
        if m.resource.kind == "CustomResourceDefinition" {
            crds.push(m.name().to_string());
        }
    }
    crate::crds::wait_established(client, &crds, Duration::from_secs(60)).await?;
    Ok(())
}

/// The identity material of an existing installation (its Secret's
/// entries), so that running install again keeps the mesh's trust anchors.
pub async fn existing_identity(
    client: &Client,
    namespace: &str,
) -> Result<Option<BTreeMap<String, String>>, KubeError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = secrets
        .get_opt(IDENTITY_SECRET)
        .await
        .map_err(kube_err(format!("reading Secret {namespace}/{IDENTITY_SECRET}")))?
    else {
        return Ok(None);
    };
    let mut out = BTreeMap::new();
    for (k, v) in secret.data.unwrap_or_default() {
        let text = String::from_utf8(v.0).map_err(|_| KubeError::Render {
            what: format!("Secret {namespace}/{IDENTITY_SECRET}"),
            message: format!("entry {k} is not text; delete the Secret or pass --identity-dir"),
        })?;
        out.insert(k, text);
    }
    Ok(Some(out))
}

/// Waits until the control plane's Deployment has a ready replica.
pub async fn wait_ready(client: &Client, namespace: &str, timeout: Duration) -> Result<(), KubeError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        let d =
            deployments.get(CONTROL).await.map_err(kube_err(format!("reading Deployment {namespace}/{CONTROL}")))?;
        if d.status.and_then(|s| s.ready_replicas).unwrap_or(0) >= 1 {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(KubeError::Timeout {
                what: format!(
                    "waiting for Deployment {namespace}/{CONTROL} to be ready (see `kubectl -n {namespace} describe deploy/{CONTROL}` and its pods' logs)"
                ),
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Pods (`namespace/name`) that carry the proxy: uninstalling under them
/// leaves proxies without a control plane.
pub async fn meshed_pods(client: &Client) -> Result<Vec<String>, KubeError> {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods.list(&ListParams::default()).await.map_err(kube_err("listing pods".into()))?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.spec.as_ref().is_some_and(crate::inject::already_injected))
        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        .collect())
}

/// Deletes every object of the installation (found by its label, so only
/// what install made), the webhook first and the CRDs last.
pub async fn uninstall(client: &Client, manifests: &[Manifest], progress: Progress<'_>) -> Result<(), KubeError> {
    let selector = ListParams::default().labels(&format!("{PART_OF}={PART_OF_VALUE}"));
    // Reverse install order puts the webhook first; CRDs (their objects go
    // with them) and the namespace are deleted last.
    let mut order: Vec<&Manifest> = manifests.iter().rev().collect();
    order.sort_by_key(|m| match m.resource.kind.as_str() {
        "CustomResourceDefinition" => 2,
        "Namespace" => 1,
        _ => 0,
    });
    let mut seen = std::collections::BTreeSet::new();
    for m in order {
        let namespace = m.object.pointer("/metadata/namespace").and_then(|v| v.as_str());
        if !seen.insert((m.resource.kind.clone(), namespace.map(str::to_string))) {
            continue;
        }
        let api = api(client, m, namespace);
        let found = api.list(&selector).await.map_err(kube_err(format!("listing {}s", m.resource.kind)))?;
        for object in found.items {
            let name = object.name_any();
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => progress(&format!("✔ {} {name} deleted", m.resource.kind)),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(source) => {
                    return Err(KubeError::Api { what: format!("deleting {} {name}", m.resource.kind), source });
                }
            }
        }
        if m.resource.kind == "CustomResourceDefinition" {
            wait_gone(&api, &selector, CRD_REMOVAL).await?;
        }
    }
    Ok(())
}

/// How long uninstall waits for the API server to finish removing the CRDs
/// (it deletes every object of theirs first).
const CRD_REMOVAL: Duration = Duration::from_secs(120);

/// Waits until nothing `selector` selects is left; on timeout names what is
/// left and what holds it (its finalizers).
async fn wait_gone(api: &Api<DynamicObject>, selector: &ListParams, timeout: Duration) -> Result<(), KubeError> {
    let started = Instant::now();
    loop {
        let left = api.list(selector).await.map_err(kube_err("listing what is left".into()))?;
        if left.items.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            let held: Vec<String> =
                left.items.iter().map(|o| format!("{} (finalizers {:?})", o.name_any(), o.finalizers())).collect();
            return Err(KubeError::Timeout {
                what: format!("the API server to remove {}", held.join(", ")),
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
