//! `meshctl inject` / `uninject`: add the proxy to Kubernetes manifests (or
//! take it out) offline, with the admission webhook's own injection function
//! (`mesh_kube::inject`), reading a file or stdin and writing stdout.

use anyhow::{Context, bail};
use clap::Args;
use mesh_kube::inject::manifests::{Mode, rewrite};
use mesh_kube::inject::{InjectConfig, InjectError};
use std::io::Read;
use std::path::{Path, PathBuf};

/// `meshctl inject` options.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// The manifests (YAML, several documents or a List); `-` for stdin.
    #[arg(default_value = "-")]
    file: PathBuf,
    /// The mesh's trust anchors (PEM): what the proxies verify the control plane with.
    #[arg(long)]
    trust_anchors: PathBuf,
    /// Where the images come from.
    #[arg(long, default_value = mesh_kube::inject::DEFAULT_REGISTRY)]
    registry: String,
    /// The proxy version (image tag) to inject.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    proxy_version: String,
    /// The namespace the mesh is installed in.
    #[arg(long, default_value = "mesh-system")]
    mesh_namespace: String,
    /// The mesh's trust domain (proxies ask for spiffe://<domain>/ns/<namespace>/sa/<account>).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The control plane's address as proxies dial it (default: its Service in --mesh-namespace).
    #[arg(long)]
    control_plane: Option<String>,
}

/// `meshctl uninject` options.
#[derive(Debug, Args)]
pub struct UninjectArgs {
    /// The manifests (YAML); `-` for stdin.
    #[arg(default_value = "-")]
    file: PathBuf,
}

fn read_input(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading the manifests from stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading the manifests {}", file.display()))
    }
}

/// Injects the proxy into every pod template of the input.
pub fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(&args.trust_anchors)
        .with_context(|| format!("reading the trust anchors {}", args.trust_anchors.display()))?;
    match mesh_identity::pem::certs(&pem) {
        Ok(certs) if !certs.is_empty() => {}
        Ok(_) => bail!("{} holds no certificate; pass the mesh's trust anchors (PEM)", args.trust_anchors.display()),
        Err(e) => bail!("{}: {e}; pass the mesh's trust anchors (PEM)", args.trust_anchors.display()),
    }
    let mut config = InjectConfig::new(&args.registry, &args.proxy_version, &args.mesh_namespace, pem);
    config.trust_domain = args.trust_domain;
    if let Some(cp) = args.control_plane {
        config.control_plane = cp;
    }
    run(&args.file, Mode::Inject, &config)
}

/// Removes what injection added from every pod template of the input.
pub fn uninject(args: UninjectArgs) -> anyhow::Result<()> {
    // Uninjection only removes by name; the configuration does not matter.
    let config =
        InjectConfig::new(mesh_kube::inject::DEFAULT_REGISTRY, env!("CARGO_PKG_VERSION"), "mesh-system", String::new());
    run(&args.file, Mode::Uninject, &config)
}

fn run(file: &Path, mode: Mode, config: &InjectConfig) -> anyhow::Result<()> {
    let input = read_input(file)?;
    let (out, outcomes) = rewrite(&input, mode, config).map_err(|e| {
        let hint = match &e {
            mesh_kube::inject::manifests::ManifestError::Annotation { source: InjectError { .. }, .. } => {
                "; fix or remove the annotation"
            }
            _ => "",
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    print!("{out}");
    let verb = if mode == Mode::Inject { "injected" } else { "uninjected" };
    for o in outcomes {
        match o.skipped {
            None => eprintln!("{} {verb}", o.object),
            Some(why) => eprintln!("{} skipped: {why}", o.object),
        }
    }
    Ok(())
}
