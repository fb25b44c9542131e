//! `meshctl identity`: the mesh's certificate authority as files.
//!
//! - `init`: a new identity directory (generated CA, or the user's own).
//! - `token`: a join token for one workload identity.
//! - `rotate add-anchor | issuer | retire-anchor`: trust anchor rotation,
//!   one step at a time, without restarting workloads.
//! - `status`: the trust domain, the anchors and the issuer.
//!
//! The directory's layout and the rules of rotation live in
//! [`mesh_identity::dir`]; this module adds checks that need a clock or the
//! operator's knowledge, and says what to do next.
//!
//! The code is split by command: [`init`], [`token`], [`rotate`] and
//! [`status`], over a [`snapshot`] of the directory and a few shared
//! helpers ([`files`] and [`show`]).

mod files;
mod init;
mod rotate;
mod show;
mod snapshot;
mod status;
#[cfg(test)]
mod tests;
mod token;

pub use files::write_secret;

use crate::Output;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Certificates expiring within this long get a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);
/// The control plane's default certificate lifetime (`mesh-control --cert-ttl`).
const DEFAULT_CERT_TTL: &str = "24h";
/// Beyond one certificate lifetime, before the old anchor may go: issuers
/// are backdated a minute, and the control plane notices a new issuer
/// within a second or two.
const RETIRE_MARGIN: Duration = Duration::from_secs(120);

/// Flags of `meshctl identity`.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Create an identity directory: trust anchor, issuer and token key.
    ///
    /// Generates a new CA, or takes your own with --trust-anchor,
    /// --issuer-cert and --issuer-key. The control plane uses the directory
    /// with `mesh-control --identity-dir DIR`.
    Init(InitArgs),
    /// Mint a join token for one workload identity (printed to stdout).
    ///
    /// A proxy started with `--identity-token-file` presents it to the
    /// control plane to get certificates for
    /// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
    Token(TokenArgs),
    /// Rotate the trust anchor (add-anchor, issuer, retire-anchor, in that
    /// order) or renew the issuer (issuer alone).
    #[command(subcommand)]
    Rotate(RotateCommand),
    /// Show the trust domain, the trust anchors and the issuer.
    Status(DirOutputArgs),
}

#[derive(Debug, Subcommand)]
enum RotateCommand {
    /// Step 1: add a new trust anchor beside the current one.
    AddAnchor(DirOutputArgs),
    /// Step 2 (or a routine renewal): a new issuer under the newest anchor.
    Issuer(IssuerArgs),
    /// Step 3: drop the old anchor once no certificate depends on it.
    RetireAnchor(RetireArgs),
}

/// The identity directory.
#[derive(Debug, Clone, Args)]
struct DirArg {
    /// The identity directory.
    #[arg(long, env = "MESH_IDENTITY_DIR", value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct InitArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The trust domain, e.g. mesh.local: identities are spiffe://<TD>/ns/<ns>/sa/<sa>.
    #[arg(long, value_name = "TD")]
    trust_domain: String,
    /// Your own trust anchors (PEM) instead of a generated one.
    #[arg(long, value_name = "PEM", requires_all = ["issuer_cert", "issuer_key"])]
    trust_anchor: Option<PathBuf>,
    /// Your own issuer certificate (PEM), signed by one of --trust-anchor.
    #[arg(long, value_name = "PEM", requires_all = ["trust_anchor", "issuer_key"])]
    issuer_cert: Option<PathBuf>,
    /// The key of --issuer-cert (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["trust_anchor", "issuer_cert"])]
    issuer_key: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The workload's namespace.
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// The workload's service account (in the registry: the service's
    /// `serviceAccount`, by default its name).
    #[arg(long, value_name = "SA")]
    service_account: String,
    /// How long the token is valid, e.g. 10m or 1h. It gets the workload its
    /// first certificate only (renewals are authenticated by the
    /// certificate) and is accepted once, so it needs to last only until
    /// the proxy starts.
    #[arg(long, default_value = "10m", value_parser = parse_ttl)]
    ttl: Duration,
    /// Write the token to this file (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Flags of `rotate add-anchor` and `status`: the directory and an output format.
#[derive(Debug, Args)]
struct DirOutputArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

#[derive(Debug, Args)]
struct IssuerArgs {
    #[command(flatten)]
    dir: DirArg,
    /// How long the new issuer is valid, e.g. 365d or 90d.
    #[arg(long, default_value = "365d", value_parser = parse_validity)]
    validity: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

#[derive(Debug, Args)]
struct RetireArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The control plane's certificate lifetime (mesh-control --cert-ttl):
    /// retiring is refused until the issuer is older than that (plus two
    /// minutes), so that no proxy still holds a certificate from the old issuer.
    #[arg(long, default_value = DEFAULT_CERT_TTL, value_parser = parse_ttl)]
    cert_ttl: Duration,
    /// Retire even if certificates from the old issuer may still be in use.
    #[arg(long)]
    force: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

/// A duration like the other flags' (`500ms`, `10s`, `5m`, `1h`), or in days (`30d`).
pub fn parse_long_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Some(days) = t.strip_suffix('d') {
        return match days.parse::<f64>() {
            Ok(d) if d.is_finite() && d >= 0.0 => {
                Duration::try_from_secs_f64(d * 86_400.0).map_err(|_| format!("invalid duration {s:?}: too long"))
            }
            _ => Err(format!("invalid duration {s:?}: write a number with a unit, like 90s, 30m, 24h or 365d")),
        };
    }
    mesh_core::duration::parse(t).map_err(|e| e.to_string())
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_long_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is too short: give at least 1s"));
    }
    Ok(d)
}

fn parse_validity(s: &str) -> Result<Duration, String> {
    let d = parse_long_duration(s)?;
    if d < Duration::from_secs(3600) {
        return Err(format!(
            "{s:?} is too short for an issuer: give at least 1h (and more than the certificates' lifetime)"
        ));
    }
    Ok(d)
}

/// Runs `meshctl identity ...`.
pub fn run(args: IdentityArgs) -> anyhow::Result<()> {
    match args.command {
        IdentityCommand::Init(a) => init::init(&a),
        IdentityCommand::Token(a) => token::token(&a),
        IdentityCommand::Rotate(RotateCommand::AddAnchor(a)) => rotate::add_anchor(&a),
        IdentityCommand::Rotate(RotateCommand::Issuer(a)) => rotate::rotate_issuer(&a),
        IdentityCommand::Rotate(RotateCommand::RetireAnchor(a)) => rotate::retire_anchor(&a),
        IdentityCommand::Status(a) => status::status(&a),
    }
}
