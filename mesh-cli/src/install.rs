//! `meshctl install` / `uninstall`: the mesh on a Kubernetes cluster. The
//! objects are rendered by `mesh_kube::install::render` from typed values
//! and applied with server-side apply; uninstall removes exactly what
//! install labelled, CRDs last.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use mesh_identity::dir::{ANCHORS, ISSUER_CERT, ISSUER_KEY, IdentityDir, TOKEN_KEY, TRUST_DOMAIN};
use mesh_kube::install::{self, FailurePolicy, Values};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Which cluster (as kubectl chooses it).
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
}

/// `meshctl install` options.
#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The mesh's namespace.
    #[arg(long, default_value = "mesh-system")]
    namespace: String,
    /// Image registry.
    #[arg(long, default_value = mesh_kube::inject::DEFAULT_REGISTRY)]
    registry: String,
    /// The version (image tag) to install.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    mesh_version: String,
    /// Use this identity directory (`meshctl identity init`) for the trust
    /// anchors and issuer. Default: keep the installed ones, or generate new
    /// ones on a first install (the anchor's key is then not kept).
    #[arg(long)]
    identity_dir: Option<PathBuf>,
    /// Trust domain of generated identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// What the API server does with pods when the injector is unreachable.
    #[arg(long, value_enum, default_value_t = Failure::Ignore)]
    failure_policy: Failure,
    /// Control plane replicas.
    #[arg(long, default_value_t = 1)]
    replicas: i32,
    /// Print the manifests instead of applying them (offline).
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: the output format.
    #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
    output: Format,
    /// How long to wait for the control plane to be ready (0s: do not wait).
    #[arg(long, default_value = "5m", value_parser = duration)]
    wait: Duration,
}

/// `meshctl uninstall` options.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The mesh's namespace.
    #[arg(long, default_value = "mesh-system")]
    namespace: String,
    /// Uninstall even while meshed pods remain (their proxies lose the control plane).
    #[arg(long)]
    force: bool,
}

/// The webhook's failure policy.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Failure {
    /// Admit pods unchanged when the injector is down.
    Ignore,
    /// Refuse pods in injected namespaces when the injector is down.
    Fail,
}

/// Manifest output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// YAML documents (kubectl apply -f - input).
    Yaml,
    /// One JSON List.
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    mesh_core::duration::parse(s).map_err(|e| e.to_string())
}

/// The files of an identity directory that go into the cluster (never the anchor's key).
const IDENTITY_FILES: &[&str] = &[TRUST_DOMAIN, ANCHORS, ISSUER_CERT, ISSUER_KEY, TOKEN_KEY];

fn read_identity(dir: &IdentityDir) -> anyhow::Result<BTreeMap<String, String>> {
    dir.load().with_context(|| format!("the identity directory {} is not usable", dir.path().display()))?;
    IDENTITY_FILES
        .iter()
        .map(|f| {
            let path = dir.path().join(f);
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok((f.to_string(), text))
        })
        .collect()
}

fn generate_identity(trust_domain: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = IdentityDir::new(tmp.path().join("identity"));
    dir.init(trust_domain, None).context("generating the trust anchor and issuer")?;
    read_identity(&dir)
}

/// Installs (or upgrades) the mesh.
pub fn install(args: InstallArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(install_async(args))
}

async fn install_async(args: InstallArgs) -> anyhow::Result<()> {
    let client = if args.dry_run {
        None
    } else {
        Some(mesh_kube::client::connect(args.cluster.kubeconfig.as_deref(), args.cluster.context.as_deref()).await?)
    };
    let identity = match (&args.identity_dir, &client) {
        (Some(dir), _) => read_identity(&IdentityDir::new(dir))?,
        (None, Some(client)) => match install::existing_identity(client, &args.namespace).await? {
            Some(existing) => {
                eprintln!(
                    "✔ keeping the installed trust anchors and issuer (Secret {}/{})",
                    args.namespace,
                    install::IDENTITY_SECRET
                );
                existing
            }
            None => {
                eprintln!(
                    "✔ generated a trust anchor and issuer for {} (the anchor's key is not kept: to rotate issuers later, \
                     install with --identity-dir from `meshctl identity init`)",
                    args.trust_domain
                );
                generate_identity(&args.trust_domain)?
            }
        },
        (None, None) => generate_identity(&args.trust_domain)?,
    };
    let Some(anchors_pem) = identity.get(ANCHORS).cloned() else {
        bail!("the identity material has no {ANCHORS}; pass --identity-dir");
    };
    let values = Values {
        namespace: args.namespace.clone(),
        registry: args.registry,
        version: args.mesh_version,
        identity,
        anchors_pem,
        failure_policy: match args.failure_policy {
            Failure::Ignore => FailurePolicy::Ignore,
            Failure::Fail => FailurePolicy::Fail,
        },
        replicas: args.replicas,
    };
    let manifests = install::render(&values);
    let Some(client) = client else {
        match args.output {
            Format::Yaml => print!("{}", install::to_yaml(&manifests)?),
            Format::Json => {
                let items: Vec<_> = manifests.iter().map(|m| m.object.clone()).collect();
                let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
                println!("{}", serde_json::to_string_pretty(&list)?);
            }
        }
        return Ok(());
    };
    install::apply(&client, &manifests, &mut |line| eprintln!("{line}")).await?;
    if !args.wait.is_zero() {
        eprintln!("… waiting up to {:?} for the control plane", args.wait);
        install::wait_ready(&client, &args.namespace, args.wait).await?;
        eprintln!("✔ control plane ready");
    }
    eprintln!("✔ installed; next: `meshctl check`, then label a namespace mesh.dev/inject=enabled");
    Ok(())
}

/// Removes what install made.
pub fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client =
            mesh_kube::client::connect(args.cluster.kubeconfig.as_deref(), args.cluster.context.as_deref()).await?;
        let meshed = install::meshed_pods(&client).await?;
        if !meshed.is_empty() && !args.force {
            bail!(
                "{} meshed pod(s) remain ({}{}); remove their injection (label mesh.dev/inject=disabled and restart \
                 them) or pass --force",
                meshed.len(),
                meshed.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if meshed.len() > 5 { ", ..." } else { "" }
            );
        }
        // Rendered only to know the kinds to look for; objects are found by label.
        let values = Values {
            namespace: args.namespace.clone(),
            registry: String::new(),
            version: String::new(),
            identity: BTreeMap::new(),
            anchors_pem: String::new(),
            failure_policy: FailurePolicy::Ignore,
            replicas: 1,
        };
        install::uninstall(&client, &install::render(&values), &mut |line| eprintln!("{line}")).await?;
        eprintln!("✔ uninstalled");
        Ok(())
    })
}
