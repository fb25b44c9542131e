//! The image archive: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) with Docker's `manifest.json` beside it in one tar, the
//! shape `docker save` writes since Docker 25. Docker ≥ 25 and containerd
//! (`kind load image-archive`, `ctr import`) read the OCI index; older Docker
//! reads `manifest.json`, which points at the same blobs.

use super::layer::{Layer, sha256};
use super::tar::{self, Header, Kind};
use serde_json::{Value, json};

/// OCI media types.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The image config's media type.
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// A gzip-compressed layer's media type.
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The index's media type.
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One blob of the layout.
#[derive(Debug, Clone)]
struct Blob {
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        Self { digest: sha256(&bytes), bytes }
    }

    fn path(&self) -> String {
        format!("blobs/sha256/{}", self.digest.trim_start_matches("sha256:"))
    }

    fn descriptor(&self, media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// What [`archive`] produced.
#[derive(Debug, Clone)]
pub struct Archive {
    /// The tar to write to disk.
    pub tar: Vec<u8>,
    /// The image manifest's digest (what a registry or `docker images --digests` shows).
    pub manifest_digest: String,
    /// Config plus compressed layers: what a registry push would transfer.
    pub compressed_size: u64,
}

/// A reference as containerd names it: `mesh-proxy:0.1.0` is
/// `docker.io/library/mesh-proxy:0.1.0`, `me/mesh-proxy:1` is
/// `docker.io/me/mesh-proxy:1`; a first component with a `.` or `:`, or
/// `localhost`, is a registry and stays.
pub fn normalize(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or_default();
    let has_registry = reference.contains('/') && (first.contains(['.', ':']) || first == "localhost");
    if has_registry {
        reference.to_string()
    } else if reference.contains('/') {
        format!("docker.io/{reference}")
    } else {
        format!("docker.io/library/{reference}")
    }
}

/// Assembles the archive for one image: `config` gets `rootfs` from the
/// layers; `reference` (`name:tag`) becomes the index's image name and the
/// Docker `RepoTags`.
pub fn archive(mut config: Value, layers: &[Layer], reference: &str) -> anyhow::Result<Archive> {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let platform = json!({"architecture": config["architecture"], "os": config["os"]});
    let config = Blob::new(serde_json::to_vec(&config)?);
    let layer_blobs: Vec<Blob> = layers.iter().map(|l| Blob::new(l.gzip.clone())).collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config.descriptor(CONFIG_TYPE),
        "layers": layer_blobs.iter().map(|b| b.descriptor(LAYER_TYPE)).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(serde_json::to_vec(&manifest)?);
    let tag = reference.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let mut descriptor = manifest.descriptor(MANIFEST_TYPE);
    descriptor["annotations"] = json!({
        "io.containerd.image.name": normalize(reference),
        "org.opencontainers.image.ref.name": tag,
    });
    descriptor["platform"] = platform;
    let index = json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [descriptor]});
    let docker_manifest = json!([{
        "Config": config.path(),
        "RepoTags": [reference],
        "Layers": layer_blobs.iter().map(Blob::path).collect::<Vec<_>>(),
    }]);

    let compressed_size = (config.bytes.len() + layer_blobs.iter().map(|b| b.bytes.len()).sum::<usize>()) as u64;
    let manifest_digest = manifest.digest.clone();
    let mut blobs: Vec<Blob> = [config, manifest].into_iter().chain(layer_blobs).collect();
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    blobs.dedup_by(|a, b| a.digest == b.digest);

    let mut w = tar::Writer::new(Vec::new());
    w.append(&dir("blobs"), b"")?;
    w.append(&dir("blobs/sha256"), b"")?;
    for blob in &blobs {
        let path = blob.path();
        w.append(&file(&path), &blob.bytes)?;
    }
    w.append(&file("index.json"), &serde_json::to_vec(&index)?)?;
    w.append(&file("manifest.json"), &serde_json::to_vec(&docker_manifest)?)?;
    w.append(&file("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Archive { tar: w.finish()?, manifest_digest, compressed_size })
}

fn dir(path: &str) -> Header<'_> {
    Header { path, kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime: 0, link: "" }
}

fn file(path: &str) -> Header<'_> {
    Header { path, kind: Kind::File, mode: 0o644, uid: 0, gid: 0, mtime: 0, link: "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches names that containerd would store under another reference
    /// than the one Kubernetes pods ask for.
    #[test]
    fn references_normalize_like_containerd() {
        assert_eq!(normalize("mesh-proxy:0.1.0"), "docker.io/library/mesh-proxy:0.1.0");
        assert_eq!(normalize("me/mesh-proxy:1"), "docker.io/me/mesh-proxy:1");
        assert_eq!(normalize("ghcr.io/me/mesh-proxy:1"), "ghcr.io/me/mesh-proxy:1");
        assert_eq!(normalize("localhost:5000/mesh-proxy:1"), "localhost:5000/mesh-proxy:1");
        assert_eq!(normalize("localhost/mesh-proxy:1"), "localhost/mesh-proxy:1");
    }
}
