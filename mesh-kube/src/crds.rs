//! The mesh's CRDs, rendered from the Rust types ([`crate::crd`]), written to
//! `deploy/crds/` (a test fails when the committed files differ; rerun it
//! with `UPDATE_CRDS=1` to rewrite them), and applied to a cluster.

use crate::crd::{AuthorizationPolicy, TrafficPolicy};
use crate::error::KubeError;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt, ResourceExt};
use std::time::Duration;

/// The field manager the mesh applies its objects with.
pub const FIELD_MANAGER: &str = "mesh";

/// The directory (relative to the repository root) the rendered CRDs are committed in.
pub const DIR: &str = "deploy/crds";

/// The mesh's own CRDs.
pub fn mesh_crds() -> Vec<CustomResourceDefinition> {
    vec![AuthorizationPolicy::crd(), TrafficPolicy::crd()]
}

/// The file a CRD is committed as: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.name_any())
}

/// A CRD as the YAML committed under [`DIR`] (with a header saying it is generated).
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, KubeError> {
    let body = serde_saphyr::to_string(crd)
        .map_err(|e| KubeError::Render { what: format!("CRD {}", crd.name_any()), message: e.to_string() })?;
    Ok(format!(
        "# Generated from mesh-kube/src/crd by `UPDATE_CRDS=1 cargo test -p mesh-kube --lib crds`: do not edit.\n{body}"
    ))
}

/// Server-side applies `crds` (as [`FIELD_MANAGER`], forcing ownership) and
/// waits until the API server reports each one Established.
pub async fn apply(client: &Client, crds: &[CustomResourceDefinition], timeout: Duration) -> Result<(), KubeError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crds {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(crd))
            .await
            .map_err(|source| KubeError::Api { what: format!("applying CRD {name}"), source })?;
    }
    let names: Vec<String> = crds.iter().map(|c| c.name_any()).collect();
    wait_established(client, &names, timeout).await
}

/// Waits until the API server reports each CRD of `names` Established.
pub async fn wait_established(client: &Client, names: &[String], timeout: Duration) -> Result<(), KubeError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in names {
        let established = await_condition(api.clone(), name, conditions::is_crd_established());
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(KubeError::Render { what: format!("CRD {name}"), message: format!("watch failed: {e}") });
            }
            Err(_) => {
                return Err(KubeError::Timeout {
                    what: format!("waiting for CRD {name} to be Established"),
                    seconds: timeout.as_secs(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(DIR)
    }

    /// Catches a type change (field, enum value, range) whose committed CRD
    /// was not regenerated: the cluster would validate against the old schema.
    #[test]
    fn committed_crds_match_the_types() {
        let update = std::env::var("UPDATE_CRDS").is_ok_and(|v| v == "1");
        let mut stale = Vec::new();
        for crd in mesh_crds() {
            let path = dir().join(file_name(&crd));
            let want = to_yaml(&crd).expect("renders");
            if update {
                std::fs::create_dir_all(dir()).expect("create deploy/crds");
                std::fs::write(&path, &want).expect("write CRD");
                continue;
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have != want {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "CRDs out of date with mesh-kube/src/crd: {}; regenerate them with `UPDATE_CRDS=1 cargo test -p mesh-kube --lib crds` and commit the result",
            stale.join(", ")
        );
    }

    /// The rendered YAML is what the API server gets: it must read back as the same CRD.
    #[test]
    fn rendered_yaml_reads_back() {
        for crd in mesh_crds() {
            let yaml = to_yaml(&crd).expect("renders");
            let back: CustomResourceDefinition = serde_saphyr::from_str(&yaml).expect("parses");
            assert_eq!(back, crd);
        }
    }
}
