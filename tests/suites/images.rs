//! The image archives `cargo xtask images` writes, checked as a container
//! runtime would read them: every digest, then the layers applied into a root
//! filesystem and each entrypoint run from it (chroot, as the image's user).
//!
//! In CI the images are built from the debug binaries (the same builder,
//! `xtask::images`; a release build would cost ~10 minutes). The release
//! images are checked on demand, after `cargo xtask images`:
//! `cargo test -p mesh-tests --test images -- --ignored`.
//!
//! Running the entrypoints needs root (chroot); elsewhere those tests report
//! themselves skipped, and `CI=true` turns a skip into a failure.

#![allow(clippy::unwrap_used)]

use mesh_tests::image::{self, Image};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use xtask::images::{self as builder, Built, IMAGES, ImageSpec};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The archives built once from the debug binaries for this test run.
fn debug_images() -> &'static (tempfile::TempDir, Vec<Built>) {
    static BUILT: OnceLock<(tempfile::TempDir, Vec<Built>)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let built = build_into(dir.path());
        (dir, built)
    })
}

fn build_into(out: &Path) -> Vec<Built> {
    let bin_dir = mesh_tests::bins::path("mesh-proxy").parent().unwrap().to_path_buf();
    let opts = builder::Options { bin_dir, out_dir: out.to_path_buf(), version: VERSION.into(), registry: None };
    builder::build_all(&opts).unwrap_or_else(|e| panic!("building the images: {e:#}"))
}

fn unpack(archive: &Path) -> (tempfile::TempDir, Image) {
    let dir = tempfile::tempdir().unwrap();
    let image = image::unpack(archive, dir.path()).unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
    (dir, image)
}

/// Whether this process may chroot; a skip is reported (a failure when `CI=true`).
fn can_chroot() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2));
    if euid == Some("0") {
        return true;
    }
    let msg = "skipped: running an image's entrypoint needs root (chroot)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; CI=true, where a skip is a failure");
    }
    eprintln!("{msg}");
    false
}

// ---------------------------------------------------------------------------
// The checks, run on the debug images here and on the release ones on demand.

/// Digests, sizes and diff_ids (checked by the unpacker), the config, and
/// Docker's manifest.json pointing at the same blobs.
fn check_layout(spec: &ImageSpec, reference: &str, img: &Image) {
    let cfg = &img.config;
    assert_eq!(cfg["architecture"], "amd64", "{}", spec.name);
    assert_eq!(cfg["os"], "linux");
    assert_eq!(img.user().unwrap(), (spec.uid, spec.uid), "{}: config.User", spec.name);
    assert_eq!(img.entrypoint(), [format!("/usr/local/bin/{}", spec.binary)]);
    assert!(img.env().iter().any(|e| e.starts_with("PATH=")), "{}: no PATH in Env", spec.name);
    let labels = &cfg["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    let mut ports: Vec<u16> = cfg["config"]["ExposedPorts"]
        .as_object()
        .map(|m| m.keys().map(|k| k.trim_end_matches("/tcp").parse().unwrap()).collect())
        .unwrap_or_default();
    ports.sort_unstable();
    assert_eq!(ports, spec.ports, "{}: ExposedPorts", spec.name);
    assert_eq!(img.name, builder::normalize(reference));

    let docker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.layout.join("manifest.json")).unwrap()).unwrap();
    let blob_path = |d: &serde_json::Value| format!("blobs/sha256/{}", d["digest"].as_str().unwrap()[7..].to_owned());
    assert_eq!(docker[0]["RepoTags"], serde_json::json!([reference]));
    assert_eq!(docker[0]["Config"], blob_path(&img.manifest["config"]));
    let layers: Vec<String> = img.manifest["layers"].as_array().unwrap().iter().map(blob_path).collect();
    assert_eq!(docker[0]["Layers"], serde_json::json!(layers));
}

/// Runs the entrypoint from the root filesystem as the image's user.
fn check_runs(spec: &ImageSpec, img: &Image) {
    let calls: &[&[&str]] = match spec.binary {
        "mesh-proxy" => &[&["--version"], &["--help"], &["init", "--help"]],
        "mesh-control" => &[&["--version"], &["--help"]],
        "meshctl" => &[&["version"], &["--help"]],
        other => panic!("no commands to try for {other}"),
    };
    for args in calls {
        let out = img.command(args).unwrap().output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} {args:?} from the image's rootfs: {}\n{stdout}{}",
            spec.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if args[0].contains("version") {
            assert!(stdout.contains(&format!("{} {VERSION}", spec.binary)), "{stdout}");
        }
    }
}

/// Every regular file is the binary, passwd/group, or a shared object; the
/// binary is root's and not writable by the user; /tmp is sticky.
fn check_contents(spec: &ImageSpec, img: &Image) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut files = Vec::new();
    let mut stack = vec![img.rootfs.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(&img.rootfs).unwrap().to_string_lossy().into_owned();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.file_type().is_symlink() {
                // Only iptables' names for its multi-call binaries.
                let target = std::fs::read_link(&p).unwrap().to_string_lossy().into_owned();
                assert!(
                    spec.iptables && rel.starts_with("usr/sbin/ip") && target.starts_with("xtables-"),
                    "{}: unexpected symlink {rel} -> {target}",
                    spec.name
                );
            } else {
                assert!(meta.is_file(), "{}: {rel} is neither file, directory nor symlink", spec.name);
                files.push(rel);
            }
        }
    }
    let binary = format!("usr/local/bin/{}", spec.binary);
    for f in &files {
        let name = f.rsplit('/').next().unwrap();
        let iptables = spec.iptables && f.starts_with("usr/sbin/xtables-") && f.ends_with("-multi");
        let allowed = f == "etc/passwd"
            || f == "etc/group"
            || *f == binary
            || iptables
            || name.starts_with("ld-linux")
            || name.contains(".so");
        assert!(allowed, "{}: unexpected file {f} (images hold the binary and what it loads only)", spec.name);
    }
    assert!(files.contains(&binary));
    assert!(!img.rootfs.join("bin/sh").exists(), "{}: a shell in the image", spec.name);
    let meta = std::fs::metadata(img.binary()).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755), "{}: binary owner/mode", spec.name);
    let tmp = std::fs::metadata(img.rootfs.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777, "{}: /tmp", spec.name);
    let passwd = std::fs::read_to_string(img.rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains(&format!(":x:{0}:{0}:", spec.uid)), "{}: no passwd entry for its user", spec.name);
}

// ---------------------------------------------------------------------------
// Debug images (CI).

/// Catches a digest or size that does not match its blob, a diff_id that is
/// not the uncompressed layer's, a wrong config (user, entrypoint, ports,
/// labels), or Docker's manifest.json naming other blobs than the OCI index.
#[test]
fn every_digest_matches_and_both_manifests_agree() {
    for built in &debug_images().1 {
        let (_dir, img) = unpack(&built.path);
        check_layout(&built.spec, &built.reference, &img);
    }
}

/// Catches an image missing a library or the loader (the entrypoint would
/// not start: e.g. libgcc_s left out fails with "error while loading shared
/// libraries"), or a binary the image's user cannot run.
#[test]
fn entrypoints_run_from_the_unpacked_rootfs_as_the_images_user() {
    if !can_chroot() {
        return;
    }
    for built in &debug_images().1 {
        let (_dir, img) = unpack(&built.path);
        check_runs(&built.spec, &img);
    }
}

/// Catches images that carry more than the binary and what it loads (a
/// shell, build leftovers), a binary the user could overwrite, a /tmp
/// without the sticky bit.
#[test]
fn images_hold_only_the_binary_and_what_it_loads() {
    if !can_chroot() {
        // Ownership in the unpacked tree is only kept when root extracts it.
        return;
    }
    for built in &debug_images().1 {
        let (_dir, img) = unpack(&built.path);
        check_contents(&built.spec, &img);
    }
}

/// Catches a proxy image that cannot run `mesh-proxy init` as the pod's init
/// container: iptables, its extension modules or their libraries missing.
/// In a fresh network namespace, from the unpacked image (as root, with /proc
/// and /dev mounted and the root filesystem read-only, as the injector asks
/// of the init container): init
/// installs the rules (seen by the host's iptables-save in that namespace),
/// then `--cleanup` removes them.
#[test]
fn the_proxy_image_runs_mesh_proxy_init() {
    if !can_chroot() {
        return;
    }
    let built = debug_images().1.iter().find(|b| b.spec.iptables).expect("the proxy image");
    let (_dir, img) = unpack(&built.path);
    for dir in ["proc", "dev"] {
        std::fs::create_dir_all(img.rootfs.join(dir)).unwrap();
    }
    let ns = format!("mimg{}", std::process::id());
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).output().unwrap();
    assert!(ip(&["netns", "add", &ns]).status.success(), "ip netns add");
    let result = std::panic::catch_unwind(|| {
        let in_image = |args: &str| {
            // `ip netns exec` runs in its own mount namespace: the proc mount ends with it.
            let script = format!(
                "mount --bind {root} {root} && mount -t proc proc {root}/proc && mount --bind /dev {root}/dev && \
                 mount -o remount,bind,ro {root} && exec chroot {root} /usr/local/bin/mesh-proxy {args}",
                root = img.rootfs.display()
            );
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["netns", "exec", &ns, "sh", "-c", &script]).env_clear();
            for kv in img.env() {
                let (k, v) = kv.split_once('=').unwrap();
                cmd.env(k, v);
            }
            let out = cmd.output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "mesh-proxy {args} from the image: {}\n{text}", out.status);
            text
        };
        let nat = || {
            let out = ip(&["netns", "exec", &ns, "iptables-save", "-t", "nat"]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        in_image("init --proxy-uid 2102");
        let rules = nat();
        assert!(rules.contains("-A MESH_OUTPUT -m owner --uid-owner 2102 -j RETURN"), "{rules}");
        assert!(rules.contains("-j REDIRECT --to-ports 4143"), "{rules}");
        in_image("init --proxy-uid 2102 --cleanup");
        assert!(!nat().contains("MESH_"), "cleanup left rules:\n{}", nat());
    });
    assert!(ip(&["netns", "delete", &ns]).status.success(), "ip netns delete");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Catches timestamps, host owners or map-order randomness in the output:
/// building again from the same binaries gives identical archives.
#[test]
fn builds_are_reproducible() {
    let first = &debug_images().1;
    let dir = tempfile::tempdir().unwrap();
    let second = build_into(dir.path());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.manifest_digest, b.manifest_digest, "{}", a.spec.name);
        assert!(std::fs::read(&a.path).unwrap() == std::fs::read(&b.path).unwrap(), "{}: archives differ", a.spec.name);
    }
}

/// Catches the images and what Kubernetes runs drifting apart: the
/// injector's and install's default registry, and the proxy's UID that
/// init exempts and the sidecar runs as.
#[test]
fn images_match_what_the_injector_runs() {
    assert_eq!(builder::DEFAULT_REGISTRY, mesh_kube::inject::DEFAULT_REGISTRY);
    let inject = mesh_kube::inject::InjectConfig::new(builder::DEFAULT_REGISTRY, VERSION, "mesh-system", String::new());
    let proxy = IMAGES.iter().find(|s| s.name == "mesh-proxy").unwrap();
    assert_eq!(inject.proxy_uid, i64::from(proxy.uid));
    assert_eq!(inject.proxy_image, builder::reference(proxy, VERSION, Some(builder::DEFAULT_REGISTRY)));
}

/// Catches an unpacker (this suite's) that would not notice a corrupted blob.
#[test]
fn a_corrupted_layer_is_refused() {
    let built = &debug_images().1[0];
    let dir = tempfile::tempdir().unwrap();
    let (_d, img) = unpack(&built.path);
    let layer = img.manifest["layers"][1]["digest"].as_str().unwrap()[7..].to_owned();
    let blob = img.layout.join("blobs/sha256").join(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let corrupted = dir.path().join("corrupted.tar");
    let status = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&corrupted)
        .arg("-C")
        .arg(&img.layout)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let err = image::unpack(&corrupted, &dir.path().join("u")).expect_err("a corrupted blob is refused");
    assert!(err.contains(&layer), "{err}");
}

// ---------------------------------------------------------------------------
// Release images, on demand.

/// The release archives `cargo xtask images` wrote into `target/images`:
/// the same checks, plus their sizes (the proxy's ≤ 20 MB compressed).
/// Catches what only the release build could break (its linking, LTO) and a
/// proxy image grown past its size budget.
#[test]
#[ignore = "needs `cargo xtask images` first (a release build); run with --ignored"]
fn release_images_from_cargo_xtask_images() {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = std::env::var_os("MESH_IMAGES_DIR").map(PathBuf::from).unwrap_or_else(|| target.join("images"));
    let run = can_chroot();
    for spec in IMAGES {
        let archive = dir.join(format!("{}.tar", spec.name));
        assert!(archive.is_file(), "{} missing: run `cargo xtask images` first", archive.display());
        let (_d, img) = unpack(&archive);
        check_layout(spec, &builder::reference(spec, VERSION, Some(builder::DEFAULT_REGISTRY)), &img);
        if run {
            check_runs(spec, &img);
            check_contents(spec, &img);
        }
        let compressed: u64 = img.manifest["config"]["size"].as_u64().unwrap()
            + img.manifest["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum::<u64>();
        eprintln!("{}: {:.1} MB compressed", spec.name, compressed as f64 / 1e6);
        if spec.name == "mesh-proxy" {
            assert!(compressed <= 20_000_000, "the proxy image is {compressed} bytes compressed, over 20 MB");
        }
    }
}
