//! `meshctl policy explain`: what the mesh does with one request.
//!
//! Given a target, a request (method, path, authority, headers) and a client
//! (a SPIFFE ID, or an unauthenticated address), it prints the route that
//! matches and why, the backend split, timeout, retries and their budget,
//! faults, rate limit, circuit breaker and limits, then the authorization
//! verdict at each destination and the policy that decides it.
//!
//! Nothing is reimplemented: policies come from the control plane's own
//! translation (of a registry file or a cluster, [`registry`]) or from a running control
//! plane's Policy API ([`live`]), and are evaluated by the proxy's own code
//! ([`explain`]).

mod explain;
mod live;
mod registry;
mod render;
#[cfg(test)]
mod tests;

use crate::Output;
use anyhow::{Context as _, anyhow, bail};
use clap::{ArgGroup, Args, Subcommand};
use explain::{Destination, Explanation, Request, RequestOut, Source};
use mesh_identity::SpiffeId;
use mesh_registry::target::Target;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// Flags of `meshctl policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Explain what the mesh does with one request.
    ///
    /// Prints the route that matches (and why), the backend split, timeout,
    /// retries and retry budget, faults, rate limit, circuit breaker and
    /// limits, then the authorization verdict at the destination and the
    /// policy that decides it. Computed by the proxy's own code, from a
    /// registry file (--registry) or a running control plane (--control-plane).
    Explain(Box<ExplainArgs>),
}

/// Flags of `meshctl policy explain`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("config").required(true).args(["registry", "control_plane", "kubernetes", "kubeconfig", "context"])))]
#[command(group(ArgGroup::new("client").args(["from", "from_unauthenticated"])))]
pub struct ExplainArgs {
    /// The registry file to explain from (what the control plane would serve).
    #[arg(long, value_name = "FILE")]
    registry: Option<PathBuf>,
    /// Explain from the cluster (as its control plane would serve it): the
    /// kubeconfig's current context, or --kubeconfig/--context.
    #[arg(long)]
    kubernetes: bool,
    /// Kubeconfig for the cluster (implies --kubernetes; default $KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (implies --kubernetes).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// A running control plane's gRPC address, e.g. https://127.0.0.1:8086.
    #[arg(long, value_name = "URL")]
    control_plane: Option<String>,
    /// Trust anchors (PEM) to verify the control plane's TLS certificate.
    #[arg(long, value_name = "PEM", requires = "control_plane")]
    trust_anchors: Option<PathBuf>,
    /// The mesh's trust domain. Default: from --identity-dir, the
    /// `trust-domain` file beside --trust-anchors, or the --from identity.
    #[arg(long, value_name = "DOMAIN")]
    trust_domain: Option<String>,
    /// An identity directory (`meshctl identity init`): the trust domain, and
    /// the trust anchors for --control-plane.
    #[arg(long, value_name = "DIR")]
    identity_dir: Option<PathBuf>,
    /// The control plane's identity (default:
    /// spiffe://<trust domain>/ns/mesh-system/sa/mesh-control).
    #[arg(long, value_name = "SPIFFE_ID", requires = "control_plane")]
    control_plane_identity: Option<String>,
    /// The target the app calls: name.namespace:port, or ip:port.
    #[arg(long, value_name = "TARGET")]
    to: String,
    /// The calling workload's identity (an mTLS client).
    #[arg(long, value_name = "SPIFFE_ID")]
    from: Option<String>,
    /// The calling workload's address, for network rules (default 0.0.0.0).
    #[arg(long, value_name = "IP", requires = "from")]
    from_ip: Option<IpAddr>,
    /// A plaintext client at this address (no mesh identity).
    #[arg(long, value_name = "IP")]
    from_unauthenticated: Option<IpAddr>,
    /// The request's method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// The request's path (and query).
    #[arg(long, default_value = "/")]
    path: String,
    /// The request's authority (Host). Default: a `host` given with -H, else --to.
    #[arg(long, value_name = "HOST")]
    authority: Option<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Judge authorization at this workload's namespace instead of the
    /// backends' (with --to-service-account and --to-port).
    #[arg(long, value_name = "NAMESPACE", requires = "to_service_account")]
    to_namespace: Option<String>,
    /// Judge authorization at workloads of this service account.
    #[arg(long, value_name = "NAME", requires = "to_port")]
    to_service_account: Option<String>,
    /// Judge authorization at this workload port (the port its proxy is dialled on).
    #[arg(long, value_name = "PORT", requires = "to_service_account")]
    to_port: Option<u16>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

/// Runs `meshctl policy`.
pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Explain(args) => {
            let e = explain_command(&args)?;
            match args.output {
                Output::Human => print!("{}", render::human(&e)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&e).context("cannot encode JSON")?),
            }
            Ok(())
        }
    }
}

/// The workload named by --to-namespace/--to-service-account/--to-port.
struct GivenWorkload {
    namespace: String,
    service_account: String,
    port: u16,
}

fn given_workload(args: &ExplainArgs, target: &Target) -> Option<GivenWorkload> {
    let (sa, port) = (args.to_service_account.clone()?, args.to_port?);
    let namespace = args.to_namespace.clone().unwrap_or_else(|| match target {
        Target::Service { key, .. } => key.namespace.clone(),
        Target::Addr(_) => "default".to_string(),
    });
    Some(GivenWorkload { namespace, service_account: sa, port })
}

fn valid_trust_domain(td: &str, from: &str) -> anyhow::Result<String> {
    let td = td.trim();
    SpiffeId::new(td, "default", "default").map_err(|e| anyhow!("invalid trust domain {td:?} ({from}): {e}"))?;
    Ok(td.to_string())
}

fn read_trust_domain(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    valid_trust_domain(&text, &file.display().to_string())
}

/// The trust domain, and where it came from.
fn trust_domain(args: &ExplainArgs, source: Option<&Source>) -> anyhow::Result<Option<String>> {
    if let Some(td) = &args.trust_domain {
        return valid_trust_domain(td, "--trust-domain").map(Some);
    }
    if let Some(dir) = &args.identity_dir {
        return read_trust_domain(&dir.join(mesh_identity::dir::TRUST_DOMAIN)).map(Some);
    }
    if let Some(beside) = args.trust_anchors.as_deref().and_then(Path::parent) {
        let file = beside.join(mesh_identity::dir::TRUST_DOMAIN);
        if file.exists() {
            return read_trust_domain(&file).map(Some);
        }
    }
    let from_client = source.and_then(|s| s.identity.as_deref()).and_then(|id| id.parse::<SpiffeId>().ok());
    Ok(from_client.map(|id| id.trust_domain().to_string()))
}

fn source(args: &ExplainArgs) -> anyhow::Result<Option<Source>> {
    if let Some(id) = &args.from {
        id.parse::<SpiffeId>().map_err(|e| anyhow!("invalid --from {id:?}: {e}"))?;
        let ip = args.from_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        return Ok(Some(Source { identity: Some(id.clone()), ip }));
    }
    Ok(args.from_unauthenticated.map(|ip| Source { identity: None, ip }))
}

/// The backends requests go to (weight > 0), each once.
fn backends_to_judge(routing: &explain::Routing) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for b in routing.backends.iter().filter(|b| b.weight > 0) {
        if !out.iter().any(|(t, _)| *t == b.target) {
            out.push((b.target.clone(), b.resolve.clone()));
        }
    }
    out
}

fn given_destination(w: &GivenWorkload, policy: mesh_proto::policy::InboundPolicy) -> Destination {
    Destination {
        backend: "the workload given by --to-service-account/--to-port".into(),
        workload: Some((w.namespace.clone(), w.service_account.clone())),
        policies: Destination::group(vec![(w.port, policy)]),
        notes: Vec::new(),
    }
}

/// Explains from the flags (`main`'s entry, also used by tests).
pub fn explain_command(args: &ExplainArgs) -> anyhow::Result<Explanation> {
    let target: Target = args.to.parse().map_err(|e| anyhow!("--to: {e}"))?;
    let request = Request::parse(&args.method, &args.path, args.authority.as_deref(), &args.headers, &args.to)?;
    let parts = request.parts()?;
    let client = source(args)?;
    let td = trust_domain(args, client.as_ref())?;
    let mut notes = Vec::new();
    let from_cluster = args.kubernetes || args.kubeconfig.is_some() || args.context.is_some();
    let (from, outbound, authorization) = if args.registry.is_some() || from_cluster {
        let (src, td, from) = match &args.registry {
            Some(path) => {
                (registry::RegistrySource::load(path, td.as_deref())?, td, format!("registry {}", path.display()))
            }
            None => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the async runtime")?;
                let (src, td) = runtime.block_on(registry::RegistrySource::load_cluster(
                    args.kubeconfig.as_deref(),
                    args.context.as_deref(),
                    td.as_deref(),
                ))?;
                let context = args.context.as_deref().unwrap_or("current context");
                (src, td, format!("cluster ({context})"))
            }
        };
        if td.is_none() {
            notes.push(
                "no trust domain (--trust-domain): serviceAccounts in authorization rules are left out, as a \
                 control plane without identity leaves them out"
                    .to_string(),
            );
        }
        let (wire, http) = src.outbound(&target)?;
        let routing = explain::route(&args.to, &wire, &parts, http)?;
        let destinations = match given_workload(args, &target) {
            Some(w) => vec![given_destination(&w, src.inbound(&w.namespace, &w.service_account, w.port))],
            None => backends_to_judge(&routing).iter().map(|(b, r)| src.destination(b, r)).collect(),
        };
        let authz = explain::authorize(&destinations, client.as_ref(), routing.http.then_some(&parts))?;
        (from, routing, authz)
    } else if let Some(url) = &args.control_plane {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let (routing, authz) =
            runtime.block_on(explain_live(args, url, &target, td.as_deref(), &parts, client.as_ref()))?;
        (format!("control plane {url}"), routing, authz)
    } else {
        bail!("give --registry FILE, --control-plane URL or --kubernetes (--kubeconfig/--context)");
    };
    Ok(Explanation {
        from,
        target: args.to.clone(),
        request: RequestOut::new(&request, &parts),
        client,
        outbound,
        authorization,
        notes,
    })
}

async fn explain_live(
    args: &ExplainArgs,
    url: &str,
    target: &Target,
    td: Option<&str>,
    parts: &http::request::Parts,
    client: Option<&Source>,
) -> anyhow::Result<(explain::Routing, Vec<explain::Authorization>)> {
    let anchors_file =
        args.trust_anchors.clone().or_else(|| args.identity_dir.as_ref().map(|d| d.join(mesh_identity::dir::ANCHORS)));
    let tls = match anchors_file {
        Some(file) => {
            let pem = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read trust anchors {}", file.display()))?;
            let anchors = mesh_identity::pem::certs(&pem).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let creds =
                mesh_identity::tls::Credentials::new(anchors).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let identity = match (&args.control_plane_identity, td) {
                (Some(id), _) => id.clone(),
                (None, Some(td)) => format!("spiffe://{td}/ns/mesh-system/sa/mesh-control"),
                (None, None) => {
                    bail!("cannot tell the control plane's identity: give --trust-domain (or --control-plane-identity)")
                }
            };
            Some((creds, identity))
        }
        None if url.starts_with("https://") => {
            bail!("{url} is TLS: give --trust-anchors PEM (or --identity-dir DIR) to verify it")
        }
        None => None,
    };
    let mut src = live::LiveSource::new(url, tls)?;
    let to = target.to_string();
    let resolved = src.resolve(&args.to).await?;
    let wire = src.outbound(&args.to).await?;
    if !resolved.exists || !wire.exists {
        bail!("unknown target {to}: the control plane at {url} knows no service for it");
    }
    let routing = explain::route(&args.to, &wire, parts, !resolved.opaque)?;
    let destinations = match given_workload(args, target) {
        Some(w) => vec![given_destination(&w, src.inbound(&w.namespace, &w.service_account, w.port).await?)],
        None => {
            let mut all = Vec::new();
            for (backend, resolve) in backends_to_judge(&routing) {
                all.extend(src.destinations(&backend, &resolve).await?);
            }
            all
        }
    };
    let authz = explain::authorize(&destinations, client, routing.http.then_some(parts))?;
    Ok((routing, authz))
}
