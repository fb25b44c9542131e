//! `meshctl check`: is the cluster ready for the mesh (`--pre`), and is the
//! installed mesh healthy? One ✔/✘ line per check with a hint on failure
//! (– for a check that could not run, such as the live probe in a mesh
//! with fewer than two meshed workloads); the exit status is 0 only when
//! every check passed. The live probe calls a meshed pod's proxy through
//! the API server, so it needs `create` on `pods/proxy`.

use crate::Output;
use crate::install::ClusterArgs;
use clap::Args;
use mesh_kube::check::{self, Check};
use mesh_kube::install::{self, FailurePolicy, Values};
use std::collections::BTreeMap;

/// `meshctl check` options.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Check that the cluster is ready for `meshctl install` instead.
    #[arg(long)]
    pre: bool,
    /// The mesh's namespace.
    #[arg(long, default_value = "mesh-system")]
    namespace: String,
    /// The version the proxies should run.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    mesh_version: String,
    /// The live probe's source: a meshed pod, `namespace/pod` (default: chosen).
    #[arg(long, value_name = "NAMESPACE/POD")]
    probe_from: Option<String>,
    /// The live probe's target: a meshed Service port, `name.namespace:port`
    /// (default: chosen).
    #[arg(long, value_name = "NAME.NAMESPACE:PORT")]
    probe_to: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

/// Runs the checks; fails (exit status 1) when any check failed.
pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let checks = rt.block_on(async {
        let client =
            match mesh_kube::client::connect(args.cluster.kubeconfig.as_deref(), args.cluster.context.as_deref()).await
            {
                Ok(c) => c,
                Err(e) => return vec![Check::fail("Kubernetes API", e.to_string(), "pass --kubeconfig/--context")],
            };
        let values = Values {
            namespace: args.namespace.clone(),
            registry: String::new(),
            version: args.mesh_version.clone(),
            identity: BTreeMap::new(),
            anchors_pem: String::new(),
            failure_policy: FailurePolicy::Ignore,
            replicas: 1,
        };
        let manifests = install::render(&values);
        if args.pre {
            check::pre_install(&client, &manifests).await
        } else {
            let probe = check::Probe { from: args.probe_from.clone(), to: args.probe_to.clone() };
            check::installed(&client, &args.namespace, &args.mesh_version, &manifests, &probe).await
        }
    });
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
        Output::Human => {
            for c in &checks {
                let mark = match (c.ok, c.skipped) {
                    (_, true) => "–",
                    (true, false) => "✔",
                    (false, false) => "✘",
                };
                println!("{mark} {}: {}", c.name, c.detail);
                if let Some(hint) = &c.hint {
                    println!("    hint: {hint}");
                }
            }
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(())
}
