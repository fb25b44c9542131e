//! A pod's volumes as directories on the node, later bind-mounted into its
//! containers: emptyDir, secret, configMap, and projected volumes whose
//! service-account token is minted through the real TokenRequest API
//! (audience and expiry from the projection, bound to the Pod).

use super::Ctx;
use anyhow::{Context as _, bail};
use mesh_kube::api::k8s_openapi::api::authentication::v1::TokenRequest;
use mesh_kube::api::k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, Secret, ServiceAccount};
use mesh_kube::api::{Api, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// The pod's volumes: name → directory on the node.
#[derive(Debug, Default)]
pub struct Volumes {
    dirs: BTreeMap<String, PathBuf>,
    root: Option<PathBuf>,
}

impl Volumes {
    /// The directory of a volume.
    pub fn get(&self, name: &str) -> Option<&Path> {
        self.dirs.get(name).map(PathBuf::as_path)
    }

    /// Removes the pod's volume directories.
    pub fn cleanup(&self) {
        if let Some(root) = &self.root {
            let _ = fs::remove_dir_all(root);
        }
    }
}

/// A file of a volume: relative path, contents, mode.
type File = (String, Vec<u8>, u32);

/// Makes every volume of the pod under `root`, and every container mount
/// point on the node (recorded in `ctx`, removed when the node stops).
pub(super) async fn prepare(ctx: &Ctx, pod: &Pod, root: &Path) -> anyhow::Result<Volumes> {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group).and_then(|g| u32::try_from(g).ok());
    let mut out = Volumes { dirs: BTreeMap::new(), root: Some(root.to_path_buf()) };
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    for v in spec.volumes.iter().flatten() {
        let dir = root.join(&v.name);
        fs::create_dir_all(&dir)?;
        let files: Vec<File> = if v.empty_dir.is_some() {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
            Vec::new()
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns).get(&name).await?;
            let data: BTreeMap<String, Vec<u8>> =
                secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            items(data, s.items.as_deref(), mode(s.default_mode, 0o644))
        } else if let Some(c) = &v.config_map {
            let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns).get(&c.name).await?;
            items(config_map_data(cm), c.items.as_deref(), mode(c.default_mode, 0o644))
        } else if let Some(p) = &v.projected {
            let default_mode = mode(p.default_mode, 0o644);
            let mut files = Vec::new();
            for source in p.sources.iter().flatten() {
                if let Some(t) = &source.service_account_token {
                    let token = token(ctx, pod, t.audience.as_deref(), t.expiration_seconds).await?;
                    files.push((t.path.clone(), token.into_bytes(), default_mode));
                } else if let Some(c) = &source.config_map {
                    let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns).get(&c.name).await?;
                    files.extend(items(config_map_data(cm), c.items.as_deref(), default_mode));
                } else if let Some(s) = &source.secret {
                    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns).get(&s.name).await?;
                    let data = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                    files.extend(items(data, s.items.as_deref(), default_mode));
                } else if let Some(d) = &source.downward_api {
                    for item in d.items.iter().flatten() {
                        let Some(f) = &item.field_ref else {
                            bail!("volume {}: downwardAPI resourceFieldRef is not supported", v.name)
                        };
                        let value = super::plan::field_value(pod, &Default::default(), &f.field_path)
                            .with_context(|| format!("volume {}: fieldRef {}", v.name, f.field_path))?;
                        files.push((item.path.clone(), value.into_bytes(), mode(item.mode, default_mode)));
                    }
                } else {
                    bail!(
                        "volume {}: a projected source other than serviceAccountToken, configMap, secret or downwardAPI",
                        v.name
                    );
                }
            }
            files
        } else {
            bail!(
                "volume {}: only emptyDir, secret, configMap and projected volumes are supported by this node",
                v.name
            );
        };
        for (path, bytes, m) in files {
            if path.split('/').any(|p| p == "..") || path.starts_with('/') {
                bail!("volume {}: path {path:?} leaves the volume", v.name);
            }
            let file = dir.join(&path);
            if let Some(parent) = file.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&file, bytes)?;
            fs::set_permissions(&file, fs::Permissions::from_mode(m))?;
            if let Some(g) = fs_group {
                std::os::unix::fs::chown(&file, None, Some(g))?;
            }
        }
        if let Some(g) = fs_group {
            std::os::unix::fs::chown(&dir, None, Some(g))?;
        }
        out.dirs.insert(v.name.clone(), dir);
    }
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        for m in c.volume_mounts.iter().flatten() {
            if !out.dirs.contains_key(&m.name) {
                bail!("container {}: volume {} is not defined", c.name, m.name);
            }
            ctx.mount_point(Path::new(&m.mount_path))?;
        }
    }
    Ok(out)
}

fn mode(m: Option<i32>, default: u32) -> u32 {
    m.and_then(|m| u32::try_from(m).ok()).unwrap_or(default) & 0o777
}

fn config_map_data(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> =
        cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
    data
}

/// The keys as files: all of them, or the listed `items` at their paths.
fn items(data: BTreeMap<String, Vec<u8>>, items: Option<&[KeyToPath]>, default_mode: u32) -> Vec<File> {
    match items {
        None => data.into_iter().map(|(k, v)| (k, v, default_mode)).collect(),
        Some(items) => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.clone(), v.clone(), mode(i.mode, default_mode))))
            .collect(),
    }
}

/// A token for the pod's ServiceAccount from the TokenRequest API, bound
/// to the Pod (so it dies with it).
async fn token(ctx: &Ctx, pod: &Pod, audience: Option<&str>, seconds: Option<i64>) -> anyhow::Result<String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let mut spec = json!({
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid},
        "expirationSeconds": seconds.unwrap_or(3600),
    });
    if let Some(a) = audience {
        spec["audiences"] = json!([a]);
    }
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let tr: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &body)
        .await
        .with_context(|| format!("TokenRequest for ServiceAccount {ns}/{sa}"))?;
    Ok(tr.status.map(|s| s.token).unwrap_or_default())
}
