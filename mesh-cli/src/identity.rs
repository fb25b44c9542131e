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

use crate::Output;
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use mesh_identity::SpiffeId;
use mesh_identity::ca::{CaError, IssuerCa};
use mesh_identity::dir::{self, IdentityDir, OwnCa};
use mesh_identity::pem::{self, CertInfo};
use serde_json::json;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
    Status(StatusArgs),
}

#[derive(Debug, Subcommand)]
enum RotateCommand {
    /// Step 1: add a new trust anchor beside the current one.
    AddAnchor(AddAnchorArgs),
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
    /// How long the token is valid, e.g. 1h, 24h or 30d. The proxy presents
    /// it at every renewal, so it must outlive the workload (or be replaced).
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    ttl: Duration,
    /// Write the token to this file (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct AddAnchorArgs {
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

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    dir: DirArg,
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
        IdentityCommand::Init(a) => init(&a),
        IdentityCommand::Token(a) => token(&a),
        IdentityCommand::Rotate(RotateCommand::AddAnchor(a)) => add_anchor(&a),
        IdentityCommand::Rotate(RotateCommand::Issuer(a)) => rotate_issuer(&a),
        IdentityCommand::Rotate(RotateCommand::RetireAnchor(a)) => retire_anchor(&a),
        IdentityCommand::Status(a) => status(&a),
    }
}

// ---------------------------------------------------------------- helpers

/// A shell-ready rendering of a path for the "next" hints.
fn shown(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@=".contains(&b)) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// RFC 3339 in UTC, to the second.
pub fn utc(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// A rough span for people: `364 days`, `23h`, `5m`, `40s`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// `in 364 days` or `expired 3 days ago`.
fn relative(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(left) => format!("in {}", span(left)),
        Err(e) => format!("expired {} ago", span(e.duration())),
    }
}

/// Opens an existing identity directory, with a helpful error if it is not one.
fn open(arg: &DirArg) -> anyhow::Result<IdentityDir> {
    let path = &arg.dir;
    if !path.join(dir::TRUST_DOMAIN).is_file() {
        bail!(
            "{} is not an identity directory (it has no {} file); create one with \
             `meshctl identity init --dir {} --trust-domain TD`",
            path.display(),
            dir::TRUST_DOMAIN,
            shown(path)
        );
    }
    Ok(IdentityDir::new(path))
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// Writes a secret atomically with mode 0600 (a reader sees the old content
/// or the new, never a part).
pub fn write_secret(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".{}.{}.{}.tmp", name.to_string_lossy(), std::process::id(), fastrand::u32(..)));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Creates `path` (mode 0700) if missing; returns whether it was created.
fn create_private_dir(path: &Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(false).mode(0o700).create(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Parents first, then this one private.
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            Ok(true)
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

fn check_trust_domain(td: &str) -> anyhow::Result<()> {
    SpiffeId::new(td, "default", "default").map(drop).map_err(|_| {
        anyhow!("invalid trust domain {td:?}: use lowercase letters, digits, '.' and '-', e.g. mesh.local")
    })
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| anyhow!("cannot encode JSON: {e}"))?;
    println!("{text}");
    Ok(())
}

/// One certificate of the directory, as `status` and the rotate steps show it.
#[derive(Debug, Clone)]
struct Cert {
    role: &'static str,
    info: CertInfo,
    /// SHA-256 of the DER, hex: tells apart anchors with the same subject.
    sha256: String,
}

impl Cert {
    fn parse(role: &'static str, der: &[u8]) -> Result<Self, pem::PemError> {
        let info = CertInfo::parse(der)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let sha256 = digest.as_ref().iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        Ok(Self { role, info, sha256 })
    }

    /// The fingerprint's first 16 hex digits.
    fn short_id(&self) -> &str {
        self.sha256.get(..16).unwrap_or(&self.sha256)
    }

    fn json(&self, now: SystemTime) -> serde_json::Value {
        json!({
            "role": self.role,
            "subject": self.info.subject,
            "sha256": self.sha256,
            "not_before": utc(self.info.not_before),
            "not_after": utc(self.info.not_after),
            "expires_in_seconds": self.info.not_after.duration_since(now).map_or(0, |d| d.as_secs()),
        })
    }

    fn line(&self, now: SystemTime) -> String {
        format!(
            "{} [sha256 {}], valid {} to {} ({})",
            self.info.subject,
            self.short_id(),
            utc(self.info.not_before),
            utc(self.info.not_after),
            relative(self.info.not_after, now)
        )
    }
}

/// What an identity directory holds, read leniently (so that `status` can
/// show an expired or broken directory), and whether it loads.
#[derive(Debug)]
struct Snapshot {
    trust_domain: String,
    anchors: Vec<Cert>,
    issuer: Option<Cert>,
    /// Whether the issuer chains to the newest anchor.
    issuer_under_newest: bool,
    /// Whether the newest anchor's key is in the directory.
    anchor_key: bool,
    /// Why the control plane would refuse the directory, if it would.
    problem: Option<String>,
}

impl Snapshot {
    fn read(d: &IdentityDir) -> anyhow::Result<Self> {
        let path = d.path();
        let trust_domain = read_file(&path.join(dir::TRUST_DOMAIN), "trust domain file")?.trim().to_string();
        let anchors_pem = read_file(&path.join(dir::ANCHORS), "trust anchors")?;
        let anchor_ders = pem::certs(&anchors_pem).with_context(|| format!("{}", path.join(dir::ANCHORS).display()))?;
        let anchors = anchor_ders
            .iter()
            .map(|a| Cert::parse("trust anchor", a))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}", path.join(dir::ANCHORS).display()))?;
        let issuer_pem = std::fs::read_to_string(path.join(dir::ISSUER_CERT)).ok();
        let issuer = issuer_pem
            .as_deref()
            .and_then(|p| pem::certs(p).ok())
            .and_then(|c| c.first().and_then(|c| Cert::parse("issuer", c).ok()));
        let issuer_key = std::fs::read_to_string(path.join(dir::ISSUER_KEY)).ok();
        let issuer_under_newest = match (&issuer_pem, &issuer_key, anchor_ders.last()) {
            (Some(c), Some(k), Some(newest)) => IssuerCa::load(c, k, std::slice::from_ref(newest)).is_ok(),
            _ => false,
        };
        let problem = d.load().err().map(|e| e.to_string());
        let anchor_key = path.join(dir::ANCHOR_KEY).is_file();
        Ok(Self { trust_domain, anchors, issuer, issuer_under_newest, anchor_key, problem })
    }

    /// Where an anchor rotation stands, and the next step.
    fn stage(&self, d: &Path) -> (&'static str, Option<String>) {
        let dir = shown(d);
        match (self.anchors.len(), self.issuer_under_newest) {
            (0 | 1, _) => ("none", None),
            (_, false) => (
                "anchor-added",
                Some(format!(
                    "once every proxy reports {} trust anchors (metric identity_trust_anchors), \
                     run `meshctl identity rotate issuer --dir {dir}`",
                    self.anchors.len()
                )),
            ),
            (_, true) => {
                let when = self.issuer.as_ref().and_then(|i| {
                    let ttl = parse_ttl(DEFAULT_CERT_TTL).ok()?;
                    Some(format!(
                        " (with mesh-control's default --cert-ttl {DEFAULT_CERT_TTL}: from {})",
                        utc(i.info.not_before + ttl + RETIRE_MARGIN)
                    ))
                });
                (
                    "issuer-rotated",
                    Some(format!(
                        "once one certificate lifetime has passed since the issuer rotation{}, \
                         run `meshctl identity rotate retire-anchor --dir {dir}`",
                        when.unwrap_or_default()
                    )),
                )
            }
        }
    }

    fn warnings(&self, d: &Path, now: SystemTime) -> Vec<String> {
        let dir = shown(d);
        let mut out = Vec::new();
        if let Some(i) = &self.issuer {
            match i.info.not_after.duration_since(now) {
                Err(_) => out.push(format!(
                    "the issuer expired on {}: proxies cannot get certificates; run `meshctl identity rotate issuer --dir {dir}`",
                    utc(i.info.not_after)
                )),
                Ok(left) if left < EXPIRY_WARNING => out.push(format!(
                    "the issuer expires {} ({}): run `meshctl identity rotate issuer --dir {dir}` soon",
                    relative(i.info.not_after, now),
                    utc(i.info.not_after)
                )),
                Ok(_) => {}
            }
        }
        if let Some(newest) = self.anchors.last() {
            if newest.info.not_after.duration_since(now).map_or(true, |left| left < EXPIRY_WARNING) {
                out.push(format!(
                    "the newest trust anchor expires {} ({}): rotate it (`meshctl identity rotate add-anchor --dir {dir}`, then issuer, then retire-anchor)",
                    relative(newest.info.not_after, now),
                    utc(newest.info.not_after)
                ));
            }
        }
        out
    }
}

// ---------------------------------------------------------------- init

fn init(a: &InitArgs) -> anyhow::Result<()> {
    check_trust_domain(&a.trust_domain)?;
    let own = match (&a.trust_anchor, &a.issuer_cert, &a.issuer_key) {
        (Some(anchors), Some(cert), Some(key)) => Some(own_ca(anchors, cert, key)?),
        (None, None, None) => None,
        _ => bail!("give all three of --trust-anchor, --issuer-cert and --issuer-key, or none to generate a CA"),
    };
    let own_ca = own.is_some();
    let path = &a.dir.dir;
    let created = create_private_dir(path)?;
    let d = IdentityDir::new(path);
    if let Err(e) = d.init(&a.trust_domain, own) {
        if created {
            // Nothing of ours is in it; never removes anything else (remove_dir needs it empty).
            let _ = std::fs::remove_dir(path);
        }
        return Err(anyhow!(e)).context("cannot create the identity directory");
    }
    let snap = Snapshot::read(&d)?;
    let now = SystemTime::now();
    let mut files = vec![dir::TRUST_DOMAIN, dir::ANCHORS];
    if !own_ca {
        files.push(dir::ANCHOR_KEY);
    }
    files.extend([dir::ISSUER_CERT, dir::ISSUER_KEY, dir::TOKEN_KEY]);
    match a.output {
        Output::Json => print_json(&json!({
            "dir": path,
            "trust_domain": snap.trust_domain,
            "own_ca": own_ca,
            "files": files,
            "certificates": snap.anchors.iter().chain(&snap.issuer).map(|c| c.json(now)).collect::<Vec<_>>(),
        })),
        Output::Human => {
            let dir = shown(path);
            let mut s = format!(
                "created identity directory {} for trust domain {}{}\n",
                path.display(),
                snap.trust_domain,
                if own_ca { " with your own CA" } else { "" }
            );
            let what = |name: &str| match name {
                dir::TRUST_DOMAIN => "the trust domain".to_string(),
                dir::ANCHORS => format!(
                    "trust bundle, {}: {}",
                    if snap.anchors.len() == 1 {
                        "1 anchor".to_string()
                    } else {
                        format!("{} anchors", snap.anchors.len())
                    },
                    snap.anchors.iter().map(|c| c.line(now)).collect::<Vec<_>>().join("; ")
                ),
                dir::ANCHOR_KEY => "the anchor's private key (mode 0600): keep it offline in production".to_string(),
                dir::ISSUER_CERT => {
                    snap.issuer.as_ref().map_or_else(String::new, |c| format!("issuer, {}", c.line(now)))
                }
                dir::ISSUER_KEY => "the issuer's private key (mode 0600)".to_string(),
                dir::TOKEN_KEY => "the join-token signing key (mode 0600)".to_string(),
                _ => String::new(),
            };
            for f in &files {
                let _ = writeln!(s, "  {f:<18} {}", what(f));
            }
            let anchors = shown(&path.join(dir::ANCHORS));
            let _ = write!(
                s,
                "\nnext steps:\n\
                 \x20 1. run the control plane as the mesh's CA:\n\
                 \x20      mesh-control --identity-dir {dir} [--cert-ttl {DEFAULT_CERT_TTL}] ...\n\
                 \x20 2. mint a join token for each workload (namespace and service account):\n\
                 \x20      meshctl identity token --dir {dir} --namespace default --service-account books --output books.token\n\
                 \x20 3. start each proxy with its token and the trust bundle:\n\
                 \x20      mesh-proxy --identity-token-file books.token --trust-anchors {anchors} ...\n\
                 \x20 then `meshctl identity status --dir {dir}` shows the CA and its expiries.\n"
            );
            if own_ca {
                s.push_str(
                    "note: your anchor's key is not in the directory, so `rotate issuer` cannot sign a new issuer;\n\
                     \x20     renew the issuer with your own CA, or move to a generated anchor with `rotate add-anchor`.\n",
                );
            }
            print!("{s}");
            Ok(())
        }
    }
}

/// Reads and checks the user's CA files, naming them in errors.
fn own_ca(anchors: &Path, cert: &Path, key: &Path) -> anyhow::Result<OwnCa> {
    let own = OwnCa {
        anchors_pem: read_file(anchors, "trust anchors")?,
        issuer_cert_pem: read_file(cert, "issuer certificate")?,
        issuer_key_pem: read_file(key, "issuer key")?,
    };
    let anchor_ders = pem::certs(&own.anchors_pem).with_context(|| format!("--trust-anchor {}", anchors.display()))?;
    for der in &anchor_ders {
        let info = CertInfo::parse(der).with_context(|| format!("--trust-anchor {}", anchors.display()))?;
        if !info.is_ca {
            bail!("--trust-anchor {}: {} is not a CA certificate", anchors.display(), info.subject);
        }
    }
    pem::certs(&own.issuer_cert_pem).with_context(|| format!("--issuer-cert {}", cert.display()))?;
    pem::private_key(&own.issuer_key_pem).with_context(|| format!("--issuer-key {}", key.display()))?;
    IssuerCa::load(&own.issuer_cert_pem, &own.issuer_key_pem, &anchor_ders).map_err(|e| match e {
        CaError::NotSignedByAnchor => anyhow!(
            "--issuer-cert {} is not signed by any certificate in --trust-anchor {}",
            cert.display(),
            anchors.display()
        ),
        CaError::KeyMismatch => {
            anyhow!("--issuer-key {} is not the key of --issuer-cert {}", key.display(), cert.display())
        }
        other => anyhow!("--issuer-cert {}: {other}", cert.display()),
    })?;
    Ok(own)
}

// ---------------------------------------------------------------- token

fn token(a: &TokenArgs) -> anyhow::Result<()> {
    let d = open(&a.dir)?;
    let token = d.mint_token(&a.namespace, &a.service_account, a.ttl).context("cannot mint a join token")?;
    let claims = mesh_identity::token::peek(&token).map_err(|e| anyhow!("the minted token does not read back: {e}"))?;
    let until = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp);
    match &a.output {
        Some(file) => {
            write_secret(file, &format!("{token}\n"))?;
            eprintln!(
                "wrote a join token for {} to {} (mode 0600), valid until {}",
                claims.sub,
                file.display(),
                utc(until)
            );
            eprintln!(
                "start the proxy with: mesh-proxy --identity-token-file {} --trust-anchors {} ...",
                shown(file),
                shown(&d.path().join(dir::ANCHORS))
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{token}").and_then(|()| out.flush()).context("cannot write the token to stdout")?;
            eprintln!("join token for {}, valid until {}", claims.sub, utc(until));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- rotate

fn add_anchor(a: &AddAnchorArgs) -> anyhow::Result<()> {
    let d = open(&a.dir)?;
    d.add_anchor().context("cannot add a trust anchor")?;
    let snap = Snapshot::read(&d)?;
    let now = SystemTime::now();
    let count = snap.anchors.len();
    let dir = shown(d.path());
    let next = format!(
        "wait until every proxy reports {count} trust anchors (metric identity_trust_anchors) before \
         `meshctl identity rotate issuer --dir {dir}`"
    );
    let newest = snap.anchors.last().ok_or_else(|| anyhow!("the bundle is empty after adding an anchor"))?;
    match a.output {
        Output::Json => print_json(&json!({
            "step": "add-anchor",
            "dir": d.path(),
            "anchors": count,
            "new_anchor": newest.json(now),
            "next": next,
        })),
        Output::Human => {
            print!(
                "added a new trust anchor: {}\n\
                 {} now holds {count} anchors; the new anchor's key replaced {} (the old key is no longer needed).\n\
                 the control plane sends the new bundle to every connected proxy within seconds;\n\
                 proxies started from now on should get this {} with --trust-anchors.\n\
                 next: {next}, e.g.\n\
                 \x20   curl -s http://<proxy admin>/metrics | grep '^identity_trust_anchors'\n",
                newest.line(now),
                d.path().join(dir::ANCHORS).display(),
                d.path().join(dir::ANCHOR_KEY).display(),
                dir::ANCHORS,
            );
            Ok(())
        }
    }
}

fn rotate_issuer(a: &IssuerArgs) -> anyhow::Result<()> {
    let d = open(&a.dir)?;
    let key = d.path().join(dir::ANCHOR_KEY);
    if !key.is_file() {
        bail!(
            "cannot sign a new issuer: {} is missing.\n\
             This directory was created with your own CA, whose key stays with you: sign a new issuer with it,\n\
             or rotate to a generated anchor first with `meshctl identity rotate add-anchor --dir {}`.",
            key.display(),
            shown(d.path())
        );
    }
    let before = Snapshot::read(&d)?;
    d.rotate_issuer(a.validity).context("cannot rotate the issuer")?;
    let snap = Snapshot::read(&d)?;
    let now = SystemTime::now();
    let issuer = snap.issuer.as_ref().ok_or_else(|| anyhow!("the new issuer does not read back"))?;
    let dir = shown(d.path());
    let rotating = snap.anchors.len() > 1;
    let next = if rotating {
        format!(
            "proxies move to the new issuer as their certificates renew: wait at least one certificate lifetime \
             (mesh-control --cert-ttl, {DEFAULT_CERT_TTL} by default) before `meshctl identity rotate retire-anchor --dir {dir}`"
        )
    } else {
        "nothing: certificates from the previous issuer chain to the same anchor and stay valid until they expire"
            .to_string()
    };
    let mut warnings = Vec::new();
    if let Some(anchor) = snap.anchors.last() {
        if issuer.info.not_after > anchor.info.not_after {
            warnings.push(format!(
                "the issuer outlives its anchor (which expires {}): certificates stop verifying when the anchor expires",
                utc(anchor.info.not_after)
            ));
        }
    }
    match a.output {
        Output::Json => print_json(&json!({
            "step": "issuer",
            "dir": d.path(),
            "previous_issuer": before.issuer.as_ref().map(|c| c.json(now)),
            "issuer": issuer.json(now),
            "anchors": snap.anchors.len(),
            "next": next,
            "warnings": warnings,
        })),
        Output::Human => {
            let mut s = format!(
                "issued a new issuer under the newest trust anchor: {}\n\
                 the control plane signs with it within seconds (it watches {}).\n",
                issuer.line(now),
                d.path().display()
            );
            for w in &warnings {
                let _ = writeln!(s, "warning: {w}");
            }
            let _ = writeln!(s, "next: {next}");
            print!("{s}");
            Ok(())
        }
    }
}

fn retire_anchor(a: &RetireArgs) -> anyhow::Result<()> {
    let d = open(&a.dir)?;
    let snap = Snapshot::read(&d)?;
    let dir = shown(d.path());
    if snap.anchors.len() <= 1 {
        let msg = format!(
            "nothing to retire: {} holds a single trust anchor.\n\
             (an anchor rotation is `rotate add-anchor`, then `rotate issuer`, then `rotate retire-anchor`)",
            d.path().join(dir::ANCHORS).display()
        );
        return match a.output {
            Output::Json => {
                print_json(&json!({ "step": "retire-anchor", "dir": d.path(), "retired": 0, "anchors": 1 }))
            }
            Output::Human => {
                println!("{msg}");
                Ok(())
            }
        };
    }
    if snap.issuer_under_newest && !a.force {
        if let Some(issuer) = &snap.issuer {
            let age = SystemTime::now().duration_since(issuer.info.not_before).unwrap_or_default();
            let wait = a.cert_ttl + RETIRE_MARGIN;
            if age < wait {
                bail!(
                    "not yet: proxies may still hold certificates from the old issuer.\n\
                     The current issuer is valid since {} ({} ago); retiring waits one certificate lifetime \
                     ({}, --cert-ttl) plus {} after that: retry in {}.\n\
                     Give --cert-ttl if mesh-control runs with a shorter one; --force retires now, which breaks \
                     the connections of proxies whose certificates still chain to the old anchor.",
                    utc(issuer.info.not_before),
                    span(age),
                    span(a.cert_ttl),
                    span(RETIRE_MARGIN),
                    span(wait.saturating_sub(age)),
                );
            }
        }
    }
    // The library refuses (and writes nothing) while the issuer still chains
    // to an older anchor.
    let retired = d.retire_anchors().context("cannot retire the old trust anchor")?;
    let after = Snapshot::read(&d)?;
    let now = SystemTime::now();
    match a.output {
        Output::Json => print_json(&json!({
            "step": "retire-anchor",
            "dir": d.path(),
            "retired": retired,
            "anchors": after.anchors.len(),
            "anchor": after.anchors.last().map(|c| c.json(now)),
        })),
        Output::Human => {
            let kept = after.anchors.last().map_or_else(String::new, |c| c.line(now));
            print!(
                "retired {retired} old trust anchor{}; {} now holds only the new one: {kept}\n\
                 the control plane sends the bundle to every connected proxy within seconds.\n\
                 the rotation is complete; give proxies started from now on this {} (--trust-anchors).\n\
                 check with: meshctl identity status --dir {dir}\n",
                if retired == 1 { "" } else { "s" },
                d.path().join(dir::ANCHORS).display(),
                dir::ANCHORS,
            );
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- status

fn status(a: &StatusArgs) -> anyhow::Result<()> {
    let d = open(&a.dir)?;
    let snap = Snapshot::read(&d)?;
    let now = SystemTime::now();
    let (stage, next) = snap.stage(d.path());
    let warnings = snap.warnings(d.path(), now);
    match a.output {
        Output::Json => print_json(&json!({
            "dir": d.path(),
            "trust_domain": snap.trust_domain,
            "anchors": snap.anchors.iter().map(|c| c.json(now)).collect::<Vec<_>>(),
            "issuer": snap.issuer.as_ref().map(|c| c.json(now)),
            "issuer_signed_by_newest_anchor": snap.issuer_under_newest,
            "anchor_key_present": snap.anchor_key,
            "rotation": stage,
            "next": next,
            "warnings": warnings,
            "problem": snap.problem,
        }))?,
        Output::Human => print!("{}", render_status(&d, &snap, now)),
    }
    if let Some(p) = snap.problem {
        bail!("the control plane would refuse this directory: {p}");
    }
    Ok(())
}

fn render_status(d: &IdentityDir, snap: &Snapshot, now: SystemTime) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "identity directory: {}", d.path().display());
    let _ = writeln!(s, "trust domain:       {}", snap.trust_domain);
    let n = snap.anchors.len();
    let certs: Vec<(String, &Cert)> = snap
        .anchors
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let role = match (n, i + 1 == n) {
                (1, _) => c.role.to_string(),
                (_, true) => format!("{} (new)", c.role),
                (_, false) => format!("{} (old)", c.role),
            };
            (role, c)
        })
        .chain(snap.issuer.iter().map(|c| (c.role.to_string(), c)))
        .collect();
    let rows: Vec<[String; 5]> = certs
        .iter()
        .map(|(role, c)| {
            [
                role.clone(),
                c.info.subject.clone(),
                c.short_id().to_string(),
                utc(c.info.not_after),
                match c.info.not_after.duration_since(now) {
                    Ok(left) => span(left),
                    Err(_) => "EXPIRED".to_string(),
                },
            ]
        })
        .collect();
    let headers = ["KIND", "SUBJECT", "SHA-256", "EXPIRES", "LEFT"];
    let mut widths = headers.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let parts: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        parts.join("   ").trim_end().to_string()
    };
    let _ = writeln!(s, "\n{}", line(headers));
    for r in &rows {
        let _ = writeln!(s, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    if snap.issuer.is_none() {
        let _ =
            writeln!(s, "issuer             (missing or unreadable: {})", d.path().join(dir::ISSUER_CERT).display());
    }
    s.push('\n');
    if snap.anchors.len() > 1 {
        let signer = if snap.issuer_under_newest { "the newest anchor" } else { "an older anchor" };
        let _ = writeln!(
            s,
            "anchor rotation in progress: {} anchors; the issuer is signed by {signer}",
            snap.anchors.len()
        );
    }
    if let (_, Some(next)) = snap.stage(d.path()) {
        let _ = writeln!(s, "next: {next}");
    }
    if !snap.anchor_key {
        let _ = writeln!(s, "note: no {} here (your own CA): `rotate issuer` needs it", dir::ANCHOR_KEY);
    }
    for w in snap.warnings(d.path(), now) {
        let _ = writeln!(s, "warning: {w}");
    }
    if snap.problem.is_none() {
        let _ = writeln!(s, "ok: the control plane can use this directory");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_days() {
        assert_eq!(parse_long_duration("365d"), Ok(Duration::from_secs(365 * 86_400)));
        assert_eq!(parse_long_duration("1.5d"), Ok(Duration::from_secs(129_600)));
        assert_eq!(parse_long_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_long_duration("90s"), Ok(Duration::from_secs(90)));
        for bad in ["", "d", "-1d", "xd", "10", "1y", "NaNd", "infd"] {
            assert!(parse_long_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_ttl("500ms").is_err());
        assert!(parse_validity("30m").is_err());
        assert_eq!(parse_validity("90d"), Ok(Duration::from_secs(90 * 86_400)));
    }

    #[test]
    fn times_for_people() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(utc(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723)), "2000-02-29T01:02:03Z");
        assert_eq!(span(Duration::from_secs(45)), "45s");
        assert_eq!(span(Duration::from_secs(600)), "10m");
        assert_eq!(span(Duration::from_secs(86_400)), "24h");
        assert_eq!(span(Duration::from_secs(365 * 86_400)), "365 days");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(relative(now + Duration::from_secs(3 * 86_400), now), "in 3 days");
        assert_eq!(relative(now - Duration::from_secs(300), now), "expired 5m ago");
    }

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(shown(Path::new("/tmp/id-1")), "/tmp/id-1");
        assert_eq!(shown(Path::new("/tmp/my dir")), "'/tmp/my dir'");
        assert_eq!(shown(Path::new("it's")), r"'it'\''s'");
    }

    #[test]
    fn secrets_are_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("temp dir");
        let file = tmp.path().join("token");
        write_secret(&file, "one\n").expect("write");
        write_secret(&file, "two\n").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "two\n");
        let mode = std::fs::metadata(&file).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(tmp.path()).expect("list").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary files left: {names:?}");
        assert!(write_secret(&tmp.path().join("missing").join("token"), "x").is_err());
    }

    #[test]
    fn snapshot_follows_a_rotation() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let d = IdentityDir::new(tmp.path().join("id"));
        d.init("mesh.local", None).expect("init");
        let s = Snapshot::read(&d).expect("snapshot");
        assert_eq!((s.trust_domain.as_str(), s.anchors.len(), s.issuer_under_newest), ("mesh.local", 1, true));
        assert_eq!(s.stage(d.path()).0, "none");
        assert!(s.problem.is_none() && s.anchor_key);
        assert!(s.warnings(d.path(), SystemTime::now()).is_empty());
        let soon = SystemTime::now() + Duration::from_secs(340 * 86_400);
        let w = s.warnings(d.path(), soon);
        assert!(w.len() == 1 && w[0].contains("the issuer expires in"), "{w:?}");

        d.add_anchor().expect("add");
        let s = Snapshot::read(&d).expect("snapshot");
        assert_eq!((s.anchors.len(), s.issuer_under_newest, s.stage(d.path()).0), (2, false, "anchor-added"));
        d.rotate_issuer(dir::ISSUER_VALIDITY).expect("issuer");
        let s = Snapshot::read(&d).expect("snapshot");
        assert_eq!((s.issuer_under_newest, s.stage(d.path()).0), (true, "issuer-rotated"));
        let text = render_status(&d, &s, SystemTime::now());
        assert!(text.contains("anchor rotation in progress: 2 anchors"), "{text}");
        assert!(text.contains("retire-anchor"), "{text}");
    }

    #[test]
    fn a_broken_directory_is_still_shown() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let d = IdentityDir::new(tmp.path());
        d.init("mesh.local", None).expect("init");
        std::fs::write(tmp.path().join(dir::ISSUER_KEY), "garbage").expect("write");
        let s = Snapshot::read(&d).expect("snapshot");
        assert!(s.issuer.is_some());
        assert!(s.problem.is_some());
        assert!(!render_status(&d, &s, SystemTime::now()).contains("ok: "));
    }
}
