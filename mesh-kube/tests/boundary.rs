//! Only mesh-kube may depend on `kube` and `k8s-openapi`: everything else
//! reaches Kubernetes through it, so the API version, TLS provider and
//! features are chosen once. Catches a crate adding `kube.workspace = true`
//! (or a `kube-*` crate, or `k8s-openapi`) to its manifest.

use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &["kube", "k8s-openapi", "kube-client", "kube-core", "kube-runtime", "kube-derive"];

fn manifests(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else { return out };
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let name = entry.file_name();
        if manifest.is_file() && name != "mesh-kube" && name != "target" {
            out.push(manifest);
        }
    }
    out
}

#[test]
fn only_mesh_kube_depends_on_kube() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let found = manifests(&root);
    assert!(found.len() > 5, "expected the workspace's crates beside mesh-kube, found {found:?}");
    let mut offenders = Vec::new();
    for manifest in found {
        let text = std::fs::read_to_string(&manifest).unwrap_or_default();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            if !section.contains("dependencies") {
                continue;
            }
            let key = line.split(['=', '.', ' ']).next().unwrap_or("").trim_matches('"');
            if FORBIDDEN.contains(&key) {
                offenders.push(format!("{}: {line}", manifest.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "only mesh-kube may depend on kube/k8s-openapi; use (or extend) mesh_kube's re-exports instead:\n{}",
        offenders.join("\n")
    );
}
