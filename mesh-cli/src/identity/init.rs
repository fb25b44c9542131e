//! `meshctl identity init`: a new identity directory, with a generated CA
//! or the user's own.

use super::files::read_file;
use super::show::{print_json, shown};
use super::snapshot::Snapshot;
use super::{DEFAULT_CERT_TTL, InitArgs};
use crate::Output;
use anyhow::{Context as _, anyhow, bail};
use mesh_identity::SpiffeId;
use mesh_identity::ca::{CaError, IssuerCa};
use mesh_identity::dir::{self, IdentityDir, OwnCa};
use mesh_identity::pem::{self, CertInfo};
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

pub(super) fn init(a: &InitArgs) -> anyhow::Result<()> {
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
