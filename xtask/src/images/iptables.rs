//! iptables in the proxy image, so the same image runs `mesh-proxy init` as
//! the pod's init container: both backends' multi-call binaries, the
//! `iptables-nft(-save|-restore)` and `-legacy` names init looks for (and
//! their ip6tables twins), the extension modules libxtables loads at run time
//! (`dlopen`: invisible to `ldd` of the binaries), and every library those load.

use super::closure::shared_objects;
use super::layer::Contents;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// (backend, multi-call binary).
const BACKENDS: [(&str, &str); 2] = [("nft", "xtables-nft-multi"), ("legacy", "xtables-legacy-multi")];

/// Where the multi-call binaries go in the image.
const SBIN: &str = "usr/sbin";

fn find_sbin(name: &str) -> anyhow::Result<PathBuf> {
    ["/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file()).with_context(|| {
        format!("{name} not found: the proxy image carries iptables for `mesh-proxy init` (apt-get install iptables)")
    })
}

/// Adds `binary`'s libraries to `layer` unless `base` or `layer` has them.
fn add_closure(layer: &mut Contents, base: &Contents, binary: &Path) -> anyhow::Result<()> {
    for lib in shared_objects(binary)? {
        let path = lib.to_string_lossy();
        if !base.contains(&path) && !layer.contains(&path) {
            let data = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
            layer.file(&path, 0o755, data);
        }
    }
    Ok(())
}

/// Fills `layer` with iptables; returns the extension directory (the
/// image's `XTABLES_LIBDIR`).
pub fn add(layer: &mut Contents, base: &Contents) -> anyhow::Result<String> {
    let mut libxtables = None;
    for (backend, multi) in BACKENDS {
        let source = find_sbin(multi)?;
        let data = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
        layer.file(&format!("{SBIN}/{multi}"), 0o755, data);
        for family in ["iptables", "ip6tables"] {
            for suffix in ["", "-save", "-restore"] {
                layer.symlink(&format!("{SBIN}/{family}-{backend}{suffix}"), multi);
            }
        }
        add_closure(layer, base, &source)?;
        libxtables = libxtables.or(shared_objects(&source)?
            .into_iter()
            .find(|l| l.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libxtables"))));
    }
    // libxtables looks for its extensions beside its real file, in xtables/.
    let lib = libxtables.context("the iptables binaries do not load libxtables: unexpected build")?;
    let real = std::fs::canonicalize(&lib).with_context(|| format!("resolving {}", lib.display()))?;
    let dir = real.parent().map(|d| d.join("xtables")).unwrap_or_default();
    let mut modules: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading the iptables extensions in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "so"))
        .collect();
    if modules.is_empty() {
        bail!("no iptables extensions in {}", dir.display());
    }
    modules.sort();
    for module in &modules {
        let data = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
        layer.file(&module.to_string_lossy(), 0o644, data);
        add_closure(layer, base, module)?;
    }
    Ok(dir.to_string_lossy().into_owned())
}
