//! Image archives unpacked as a container runtime would: `index.json` →
//! manifest → config → layers applied in order into a root filesystem, every
//! blob's digest and size checked on the way. Independent of the code that
//! wrote them: the system's `tar`, `gzip` and `sha256sum` read them.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An unpacked image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The image layout as extracted from the archive (`index.json`, `blobs/`…).
    pub layout: PathBuf,
    /// The root filesystem: every layer applied in order.
    pub rootfs: PathBuf,
    /// The image manifest (from `index.json`'s only entry).
    pub manifest: Value,
    /// The image config (`config.User`, `config.Entrypoint`, …).
    pub config: Value,
    /// The `io.containerd.image.name` annotation: the reference containerd stores.
    pub name: String,
}

impl Image {
    /// `config.User` as (uid, gid); numeric, as the mesh's images write it.
    pub fn user(&self) -> Result<(u32, u32), String> {
        let user = self.config["config"]["User"].as_str().ok_or("config.User missing")?;
        let (u, g) = user.split_once(':').ok_or(format!("config.User {user:?} is not uid:gid"))?;
        Ok((u.parse().map_err(|e| format!("uid {u:?}: {e}"))?, g.parse().map_err(|e| format!("gid {g:?}: {e}"))?))
    }

    /// `config.Entrypoint`.
    pub fn entrypoint(&self) -> Vec<String> {
        strings(&self.config["config"]["Entrypoint"])
    }

    /// `config.Env` (`KEY=value`).
    pub fn env(&self) -> Vec<String> {
        strings(&self.config["config"]["Env"])
    }

    /// The entrypoint's binary as a host path inside the root filesystem.
    pub fn binary(&self) -> PathBuf {
        let entry = self.entrypoint().into_iter().next().unwrap_or_default();
        self.rootfs.join(entry.trim_start_matches('/'))
    }

    /// A command running the entrypoint with `args` inside the root filesystem
    /// (chroot) as the image's user, with the image's environment only. Needs root.
    pub fn command(&self, args: &[&str]) -> Result<Command, String> {
        let (uid, gid) = self.user()?;
        // Found on our PATH: the child's environment is the image's alone.
        let mut cmd = Command::new(on_path("chroot").ok_or("`chroot` not found (coreutils)")?);
        cmd.arg(format!("--userspec={uid}:{gid}")).arg(&self.rootfs);
        cmd.args(self.entrypoint()).args(args).env_clear();
        for kv in self.env() {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        Ok(cmd)
    }
}

/// `name`'s full path from this process's PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out.stdout)
}

/// `sha256:<hex>` of a file, by `sha256sum`.
pub fn sha256_of(path: &Path) -> Result<String, String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    let text = String::from_utf8_lossy(&out);
    let hex = text.split_whitespace().next().ok_or("sha256sum printed nothing")?;
    Ok(format!("sha256:{hex}"))
}

/// Reads the blob a descriptor names, checking its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> Result<PathBuf, String> {
    let digest = descriptor["digest"].as_str().ok_or(format!("descriptor without digest: {descriptor}"))?;
    let hex = digest.strip_prefix("sha256:").ok_or(format!("not a sha256 digest: {digest}"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("malformed digest {digest}"));
    }
    let path = layout.join("blobs/sha256").join(hex);
    let size = std::fs::metadata(&path).map_err(|e| format!("blob {digest} missing: {e}"))?.len();
    if Some(size) != descriptor["size"].as_u64() {
        return Err(format!("blob {digest} is {size} bytes, the descriptor says {}", descriptor["size"]));
    }
    let actual = sha256_of(&path)?;
    if actual != digest {
        return Err(format!("blob {digest} has digest {actual}"));
    }
    Ok(path)
}

fn json_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Extracts `archive` under `dir` (`dir/layout`, `dir/rootfs`) and applies
/// its layers; any digest, size or diff_id that does not match is an error.
pub fn unpack(archive: &Path, dir: &Path) -> Result<Image, String> {
    let layout = dir.join("layout");
    let rootfs = dir.join("rootfs");
    for d in [&layout, &rootfs] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    run(Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(&layout))?;
    let oci_layout = json_file(&layout.join("oci-layout"))?;
    if oci_layout["imageLayoutVersion"] != "1.0.0" {
        return Err(format!("oci-layout: {oci_layout}"));
    }
    let index = json_file(&layout.join("index.json"))?;
    let entries = index["manifests"].as_array().ok_or("index.json has no manifests")?;
    let [descriptor] = entries.as_slice() else {
        return Err(format!("index.json lists {} manifests, expected one", entries.len()));
    };
    let name = descriptor["annotations"]["io.containerd.image.name"].as_str().unwrap_or_default().to_string();
    let manifest = json_file(&blob(&layout, descriptor)?)?;
    let config = json_file(&blob(&layout, &manifest["config"])?)?;
    let layers = manifest["layers"].as_array().ok_or("manifest has no layers")?;
    let diff_ids = strings(&config["rootfs"]["diff_ids"]);
    if diff_ids.len() != layers.len() {
        return Err(format!("{} layers but {} diff_ids", layers.len(), diff_ids.len()));
    }
    for (i, (layer, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        let gz = blob(&layout, layer)?;
        let tar = dir.join(format!("layer{i}.tar"));
        let out = run(Command::new("gzip").arg("-dc").arg(&gz))?;
        std::fs::write(&tar, out).map_err(|e| format!("{}: {e}", tar.display()))?;
        let actual = sha256_of(&tar)?;
        if &actual != diff_id {
            return Err(format!("layer {i}: uncompressed digest {actual}, config's diff_id {diff_id}"));
        }
        let listing = String::from_utf8_lossy(&run(Command::new("tar").arg("-tf").arg(&tar))?).into_owned();
        if let Some(w) = listing.lines().find(|l| l.rsplit('/').next().is_some_and(|n| n.starts_with(".wh."))) {
            return Err(format!("layer {i} has a whiteout ({w}), which this unpacker does not apply"));
        }
        // As root, tar keeps the entries' owners and modes, as a runtime does.
        run(Command::new("tar").args(["--numeric-owner", "-xpf"]).arg(&tar).arg("-C").arg(&rootfs))?;
        let _ = std::fs::remove_file(&tar);
    }
    Ok(Image { layout, rootfs, manifest, config, name })
}
