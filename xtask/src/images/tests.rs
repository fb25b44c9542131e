//! The Dockerfile and the images xtask builds must agree.

use super::*;

/// One `FROM … AS stage` of the Dockerfile: the instructions we compare.
#[derive(Debug, Default)]
struct Stage {
    title: Option<String>,
    user: Option<String>,
    expose: Vec<u16>,
    entrypoint: Option<String>,
    copies: Vec<String>,
}

/// The Dockerfile's stages (continuation lines joined), in order.
fn stages(text: &str) -> Vec<Stage> {
    let joined = text.replace("\\\n", " ");
    let mut stages: Vec<Stage> = Vec::new();
    for line in joined.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let (instr, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match instr {
            "FROM" => stages.push(Stage::default()),
            "LABEL" if rest.contains("org.opencontainers.image.title=") => {
                let title = rest.split("org.opencontainers.image.title=").nth(1).unwrap_or_default();
                let title = title.split_whitespace().next().unwrap_or_default().trim_matches('"');
                stages.last_mut().expect("LABEL after FROM").title = Some(title.to_string());
            }
            "USER" => stages.last_mut().expect("USER after FROM").user = Some(rest.to_string()),
            "EXPOSE" => {
                let ports = rest.split_whitespace().map(|p| p.trim_end_matches("/tcp").parse::<u16>().expect("a port"));
                stages.last_mut().expect("EXPOSE after FROM").expose.extend(ports);
            }
            "ENTRYPOINT" => stages.last_mut().expect("ENTRYPOINT after FROM").entrypoint = Some(rest.to_string()),
            "COPY" => stages.last_mut().expect("COPY after FROM").copies.push(rest.to_string()),
            _ => {}
        }
    }
    stages
}

fn dockerfile() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/images/Dockerfile");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Catches the Dockerfile and `cargo xtask images` drifting apart: another
/// user (the proxy's UID is what iptables exempts), entrypoint or port set.
#[test]
fn the_dockerfile_builds_the_same_images() {
    let stages = stages(&dockerfile());
    for spec in IMAGES {
        let stage = stages
            .iter()
            .find(|s| s.title.as_deref() == Some(spec.name))
            .unwrap_or_else(|| panic!("no Dockerfile stage labelled org.opencontainers.image.title={}", spec.name));
        assert_eq!(stage.user.as_deref(), Some(format!("{0}:{0}", spec.uid).as_str()), "{}: USER", spec.name);
        let mut ports = stage.expose.clone();
        ports.sort_unstable();
        assert_eq!(ports, spec.ports, "{}: EXPOSE", spec.name);
        let entry = format!(r#"["{BIN_DIR}/{}"]"#, spec.binary);
        assert_eq!(stage.entrypoint.as_deref(), Some(entry.as_str()), "{}: ENTRYPOINT", spec.name);
        let dest = format!("{BIN_DIR}/{}", spec.binary);
        assert!(stage.copies.iter().any(|c| c.ends_with(&dest)), "{}: no COPY to {dest}", spec.name);
        let has_iptables = stage.copies.iter().any(|c| c.contains("--from=iptables"));
        assert_eq!(has_iptables, spec.iptables, "{}: iptables (for `mesh-proxy init`) in one build only", spec.name);
    }
}

/// Catches the Dockerfile building other packages than xtask does.
#[test]
fn the_dockerfile_builds_the_same_packages() {
    let text = dockerfile();
    let build = text.lines().find(|l| l.contains("cargo build")).expect("a cargo build line");
    for package in CARGO_PACKAGES {
        assert!(build.contains(&format!("-p {package}")), "Dockerfile's build misses -p {package}: {build}");
    }
    assert!(build.contains("--release") && build.contains("--locked"), "{build}");
}

/// Catches an image running as root, or two components sharing a UID (the
/// proxy's must be its own: iptables exempts it from interception).
#[test]
fn every_image_runs_as_its_own_non_root_user() {
    let (passwd, _) = passwd_and_group();
    for spec in IMAGES {
        assert_ne!(spec.uid, 0, "{}", spec.name);
        assert_eq!(IMAGES.iter().filter(|s| s.uid == spec.uid).count(), 1, "{} shares its UID", spec.name);
        assert!(passwd.contains(&format!(":x:{0}:{0}:", spec.uid)), "{} has no passwd entry", spec.name);
    }
    assert_eq!(IMAGES[0].uid, 2102, "the proxy's UID is fixed: injected pods and `mesh-proxy init` use 2102");
}

/// Catches a registry prefix producing a malformed reference.
#[test]
fn references_take_the_registry_prefix() {
    let proxy = &IMAGES[0];
    assert_eq!(reference(proxy, "0.1.0", None), "mesh-proxy:0.1.0");
    assert_eq!(reference(proxy, "0.1.0", Some("ghcr.io/me/")), "ghcr.io/me/mesh-proxy:0.1.0");
}
