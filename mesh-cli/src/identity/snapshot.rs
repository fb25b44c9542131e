//! What an identity directory holds, as `status` and the rotate steps show it.

use super::files::read_file;
use super::show::{relative, shown, utc};
use super::{DEFAULT_CERT_TTL, EXPIRY_WARNING, RETIRE_MARGIN, parse_ttl};
use anyhow::Context as _;
use mesh_identity::ca::IssuerCa;
use mesh_identity::dir::{self, IdentityDir};
use mesh_identity::pem::{self, CertInfo};
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

/// One certificate of the directory, as `status` and the rotate steps show it.
#[derive(Debug, Clone)]
pub(super) struct Cert {
    pub(super) role: &'static str,
    pub(super) info: CertInfo,
    /// SHA-256 of the DER, hex: tells apart anchors with the same subject.
    pub(super) sha256: String,
}

impl Cert {
    pub(super) fn parse(role: &'static str, der: &[u8]) -> Result<Self, pem::PemError> {
        let info = CertInfo::parse(der)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let sha256 = digest.as_ref().iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        Ok(Self { role, info, sha256 })
    }

    /// The fingerprint's first 16 hex digits.
    pub(super) fn short_id(&self) -> &str {
        self.sha256.get(..16).unwrap_or(&self.sha256)
    }

    pub(super) fn json(&self, now: SystemTime) -> serde_json::Value {
        json!({
            "role": self.role,
            "subject": self.info.subject,
            "sha256": self.sha256,
            "not_before": utc(self.info.not_before),
            "not_after": utc(self.info.not_after),
            "expires_in_seconds": self.info.not_after.duration_since(now).map_or(0, |d| d.as_secs()),
        })
    }

    pub(super) fn line(&self, now: SystemTime) -> String {
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
pub(super) struct Snapshot {
    pub(super) trust_domain: String,
    pub(super) anchors: Vec<Cert>,
    pub(super) issuer: Option<Cert>,
    /// Whether the issuer chains to the newest anchor.
    pub(super) issuer_under_newest: bool,
    /// Whether the newest anchor's key is in the directory.
    pub(super) anchor_key: bool,
    /// Why the control plane would refuse the directory, if it would.
    pub(super) problem: Option<String>,
}

impl Snapshot {
    pub(super) fn read(d: &IdentityDir) -> anyhow::Result<Self> {
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
    pub(super) fn stage(&self, d: &Path) -> (&'static str, Option<String>) {
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

    pub(super) fn warnings(&self, d: &Path, now: SystemTime) -> Vec<String> {
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
