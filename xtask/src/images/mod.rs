//! `cargo xtask images`: OCI image archives for the mesh's binaries, built
//! without a container daemon. Each image has a base layer (users and
//! groups, `/tmp`, the dynamic loader and the shared libraries the binary
//! loads, taken from this machine), the proxy's an iptables layer (for
//! `mesh-proxy init` as the init container), and the binary's own layer.
//! Everything is deterministic: the same binaries give the same digests.
//!
//! `deploy/images/Dockerfile` builds the same images with Docker; a test
//! checks that its users, entrypoints and ports are these.

mod closure;
mod iptables;
mod layer;
mod oci;
mod tar;

pub use closure::shared_objects;
pub use layer::sha256;
pub use oci::normalize;

use anyhow::{Context, bail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The proxy's fixed UID (and GID): `mesh-proxy init` exempts it from interception.
pub const PROXY_UID: u32 = 2102;
/// The control plane's UID (and GID).
pub const CONTROL_UID: u32 = 2103;
/// meshctl's UID (and GID): distroless' conventional `nonroot`.
pub const MESHCTL_UID: u32 = 65532;
/// The repository prefix images get by default: what `meshctl install` and
/// the injector name (`mesh_kube::inject::DEFAULT_REGISTRY`; the images suite
/// checks they agree).
pub const DEFAULT_REGISTRY: &str = "ghcr.io/mesh-dev";
/// The packages whose release binaries the images hold (`cargo build -p …`).
pub const CARGO_PACKAGES: &[&str] = &["mesh-proxy", "mesh-control", "mesh-cli"];
/// Where the binary lives in every image.
pub const BIN_DIR: &str = "/usr/local/bin";

/// One image: which binary, run as whom, exposing what.
#[derive(Debug, Clone, Copy)]
pub struct ImageSpec {
    /// The image's repository name (`mesh-proxy`); the archive is `<name>.tar`.
    pub name: &'static str,
    /// The binary in cargo's target directory and in [`BIN_DIR`].
    pub binary: &'static str,
    /// UID and GID the entrypoint runs as (never 0).
    pub uid: u32,
    /// TCP ports the image exposes.
    pub ports: &'static [u16],
    /// `org.opencontainers.image.description`.
    pub description: &'static str,
    /// Whether the image carries iptables (the proxy's, for `mesh-proxy init`).
    pub iptables: bool,
}

/// The mesh's images.
pub const IMAGES: &[ImageSpec] = &[
    ImageSpec {
        name: "mesh-proxy",
        binary: "mesh-proxy",
        uid: PROXY_UID,
        // outbound, inbound, admin
        ports: &[4140, 4143, 4191],
        description: "The mesh's sidecar proxy (also `mesh-proxy init` for the iptables rules)",
        iptables: true,
    },
    ImageSpec {
        name: "mesh-control",
        binary: "mesh-control",
        uid: CONTROL_UID,
        // gRPC API, admin, admission webhook
        ports: &[8086, 8443, 9990],
        description: "The mesh's control plane: discovery, policy, identity (CA)",
        iptables: false,
    },
    ImageSpec {
        name: "meshctl",
        binary: "meshctl",
        uid: MESHCTL_UID,
        ports: &[],
        description: "The mesh's command line",
        iptables: false,
    },
];

/// The users and groups every image knows (root for files' ownership).
fn passwd_and_group() -> (String, String) {
    let users = [("root", 0), ("mesh-proxy", PROXY_UID), ("mesh-control", CONTROL_UID), ("nonroot", MESHCTL_UID)];
    let mut passwd = String::new();
    let mut group = String::new();
    for (name, id) in users {
        let home = if id == 0 { "/root" } else { "/nonexistent" };
        passwd.push_str(&format!("{name}:x:{id}:{id}:{name}:{home}:/sbin/nologin\n"));
        group.push_str(&format!("{name}:x:{id}:\n"));
    }
    (passwd, group)
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The directory holding the binaries (`target/release`).
    pub bin_dir: PathBuf,
    /// Where the archives go (created if missing).
    pub out_dir: PathBuf,
    /// The tag (the workspace version) and `org.opencontainers.image.version`.
    pub version: String,
    /// Prefix for the repository names (`ghcr.io/me` → `ghcr.io/me/mesh-proxy`).
    pub registry: Option<String>,
}

/// One archive written.
#[derive(Debug, Clone)]
pub struct Built {
    /// Which image.
    pub spec: ImageSpec,
    /// `name:tag` as loaded (`mesh-proxy:0.1.0`).
    pub reference: String,
    /// The archive.
    pub path: PathBuf,
    /// The image manifest's digest.
    pub manifest_digest: String,
    /// Config plus compressed layers, in bytes.
    pub compressed_size: u64,
}

/// The `image` reference for `spec` (what Kubernetes manifests name).
pub fn reference(spec: &ImageSpec, version: &str, registry: Option<&str>) -> String {
    match registry.map(|r| r.trim_end_matches('/')) {
        Some(r) if !r.is_empty() => format!("{r}/{}:{version}", spec.name),
        _ => format!("{}:{version}", spec.name),
    }
}

/// Builds every image in [`IMAGES`] from the binaries in `opts.bin_dir`.
pub fn build_all(opts: &Options) -> anyhow::Result<Vec<Built>> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("images for {other} are not supported (amd64 and arm64 are)"),
    };
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    IMAGES.iter().map(|spec| build_one(spec, arch, opts)).collect()
}

fn build_one(spec: &ImageSpec, arch: &str, opts: &Options) -> anyhow::Result<Built> {
    let source = opts.bin_dir.join(spec.binary);
    if !source.is_file() {
        bail!("{} does not exist: build it first (cargo build -p {})", source.display(), spec.binary);
    }
    let binary = stripped(&source, &opts.out_dir)?;

    let mut base = layer::Contents::default();
    let (passwd, group) = passwd_and_group();
    base.file("etc/passwd", 0o644, passwd.into_bytes());
    base.file("etc/group", 0o644, group.into_bytes());
    base.dir("tmp", 0o1777, (0, 0));
    for lib in shared_objects(&source)? {
        let data = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        base.file(&lib.to_string_lossy(), 0o755, data);
    }
    let mut env = vec![format!("PATH={BIN_DIR}:/usr/sbin:/usr/bin:/bin")];
    let mut layers = vec![layer::build(&base)?];
    let mut history = vec!["users, /tmp, loader and libraries".to_string()];
    if spec.iptables {
        let mut tools = layer::Contents::default();
        let xtables = iptables::add(&mut tools, &base)?;
        env.push(format!("XTABLES_LIBDIR={xtables}"));
        layers.push(layer::build(&tools)?);
        history.push("iptables (nft and legacy) for `mesh-proxy init`".into());
    }
    let mut app = layer::Contents::default();
    app.file(&format!("{BIN_DIR}/{}", spec.binary), 0o755, binary);
    layers.push(layer::build(&app)?);
    history.push(format!("{BIN_DIR}/{}", spec.binary));

    let reference = reference(spec, &opts.version, opts.registry.as_deref());
    let ports: serde_json::Map<String, serde_json::Value> =
        spec.ports.iter().map(|p| (format!("{p}/tcp"), json!({}))).collect();
    let history: Vec<serde_json::Value> = history
        .iter()
        .map(|h| json!({"created": "1970-01-01T00:00:00Z", "created_by": format!("cargo xtask images: {h}")}))
        .collect();
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": format!("{0}:{0}", spec.uid),
            "Entrypoint": [format!("{BIN_DIR}/{}", spec.binary)],
            "Env": env,
            "WorkingDir": "/",
            "ExposedPorts": ports,
            "Labels": {
                "org.opencontainers.image.title": spec.name,
                "org.opencontainers.image.description": spec.description,
                "org.opencontainers.image.version": opts.version,
                "org.opencontainers.image.licenses": "Apache-2.0",
            },
        },
        "history": history,
    });
    let archive = oci::archive(config, &layers, &reference)?;
    let path = opts.out_dir.join(format!("{}.tar", spec.name));
    let partial = path.with_extension("tar.partial");
    std::fs::write(&partial, &archive.tar).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(Built {
        spec: *spec,
        reference,
        path,
        manifest_digest: archive.manifest_digest,
        compressed_size: archive.compressed_size,
    })
}

/// The binary without debug information (symbols stay, so backtraces keep
/// function names), via binutils' `strip` into a scratch file.
fn stripped(source: &Path, scratch_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = scratch_dir.join(format!(".{name}.stripped"));
    let out = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&tmp)
        .arg(source)
        .output()
        .context("cannot run `strip` (apt-get install binutils)")?;
    if !out.status.success() {
        bail!("`strip {}` failed: {}", source.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let data = std::fs::read(&tmp).with_context(|| format!("reading {}", tmp.display()));
    let _ = std::fs::remove_file(&tmp);
    data
}

#[cfg(test)]
mod tests;
