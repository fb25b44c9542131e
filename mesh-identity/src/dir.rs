//! The identity directory: everything the control plane's CA needs, as
//! files an operator can inspect, back up and rotate.
//!
//! ```text
//! trust-domain            the trust domain, e.g. mesh.local
//! trust-anchors.pem       the trust bundle: one anchor, or two during a rotation
//! trust-anchor.key        the newest anchor's key (keep it offline in production)
//! issuer.crt, issuer.key  the issuer the control plane signs leaves with
//! token.key               the join-token signing key
//! ```
//!
//! Rotation without restarting workloads: [`IdentityDir::add_anchor`] puts a
//! new anchor beside the old one (proxies learn the bundle live);
//! [`IdentityDir::rotate_issuer`] re-issues the issuer under the newest
//! anchor (leaves move over as they renew); [`IdentityDir::retire_anchors`]
//! drops the old anchor once nothing depends on it.

use crate::SpiffeId;
use crate::ca::{self, CaError, CertAndKey, IssuerCa};
use crate::pem::{self, CertInfo};
use crate::token::{Claims, TokenKey};
use rustls_pki_types::CertificateDer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The trust domain file.
pub const TRUST_DOMAIN: &str = "trust-domain";
/// The trust bundle.
pub const ANCHORS: &str = "trust-anchors.pem";
/// The newest anchor's private key.
pub const ANCHOR_KEY: &str = "trust-anchor.key";
/// The issuer certificate.
pub const ISSUER_CERT: &str = "issuer.crt";
/// The issuer key.
pub const ISSUER_KEY: &str = "issuer.key";
/// The join-token key.
pub const TOKEN_KEY: &str = "token.key";

const ANCHOR_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Default issuer lifetime.
pub const ISSUER_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Why the identity directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file's content is wrong.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// CA material problem.
    #[error("{}: {source}", path.display())]
    Ca {
        /// The directory.
        path: PathBuf,
        /// The problem.
        source: CaError,
    },
    /// `init` would overwrite existing material.
    #[error("{} already holds identity material; refusing to overwrite it (use another --dir, or the rotate commands)", path.display())]
    Exists {
        /// The directory.
        path: PathBuf,
    },
    /// A rotation step out of order.
    #[error("{0}")]
    Order(String),
}

/// CA material a user brings instead of generating it.
#[derive(Debug, Clone)]
pub struct OwnCa {
    /// Trust anchors, PEM.
    pub anchors_pem: String,
    /// Issuer certificate, PEM.
    pub issuer_cert_pem: String,
    /// Issuer key, PEM.
    pub issuer_key_pem: String,
}

/// What a loaded directory holds.
#[derive(Debug)]
pub struct Material {
    /// The trust domain.
    pub trust_domain: String,
    /// The trust bundle.
    pub anchors: Vec<CertificateDer<'static>>,
    /// The issuer.
    pub issuer: IssuerCa,
    /// The join-token key.
    pub token_key: TokenKey,
}

/// An identity directory.
#[derive(Debug, Clone)]
pub struct IdentityDir {
    path: PathBuf,
}

impl IdentityDir {
    /// The directory at `path` (not read yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn read(&self, name: &str) -> Result<String, DirError> {
        let path = self.file(name);
        std::fs::read_to_string(&path).map_err(|source| DirError::Io { path, source })
    }

    fn write(&self, name: &str, content: &str, secret: bool) -> Result<(), DirError> {
        let path = self.file(name);
        let tmp = self.file(&format!(".{name}.tmp"));
        let io = |source| DirError::Io { path: path.clone(), source };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(content.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    fn ca_err(&self, source: CaError) -> DirError {
        DirError::Ca { path: self.path.clone(), source }
    }

    /// Creates the directory's material: a new anchor and issuer, or the
    /// user's own; and a token key. Refuses to overwrite.
    pub fn init(&self, trust_domain: &str, own: Option<OwnCa>) -> Result<(), DirError> {
        SpiffeId::new(trust_domain, "default", "default")
            .map_err(|e| DirError::Invalid { path: self.file(TRUST_DOMAIN), reason: e.to_string() })?;
        std::fs::create_dir_all(&self.path).map_err(|source| DirError::Io { path: self.path.clone(), source })?;
        if self.file(ANCHORS).exists() || self.file(ISSUER_CERT).exists() {
            return Err(DirError::Exists { path: self.path.clone() });
        }
        match own {
            Some(own) => {
                let anchors = pem::certs(&own.anchors_pem)
                    .map_err(|e| DirError::Invalid { path: self.file(ANCHORS), reason: e.to_string() })?;
                IssuerCa::load(&own.issuer_cert_pem, &own.issuer_key_pem, &anchors).map_err(|e| self.ca_err(e))?;
                self.write(ANCHORS, &own.anchors_pem, false)?;
                self.write(ISSUER_CERT, &own.issuer_cert_pem, false)?;
                self.write(ISSUER_KEY, &own.issuer_key_pem, true)?;
            }
            None => {
                let anchor = ca::generate_trust_anchor(trust_domain, ANCHOR_VALIDITY).map_err(|e| self.ca_err(e))?;
                let issuer = ca::generate_issuer(trust_domain, &anchor, ISSUER_VALIDITY).map_err(|e| self.ca_err(e))?;
                self.write(ANCHOR_KEY, &anchor.key_pem, true)?;
                self.write(ANCHORS, &anchor.cert_pem, false)?;
                self.write(ISSUER_KEY, &issuer.key_pem, true)?;
                self.write(ISSUER_CERT, &issuer.cert_pem, false)?;
            }
        }
        let key = TokenKey::generate().map_err(|e| DirError::Order(e.to_string()))?;
        self.write(TOKEN_KEY, &key.encode(), true)?;
        self.write(TRUST_DOMAIN, &format!("{trust_domain}\n"), false)
    }

    /// Loads and checks everything.
    pub fn load(&self) -> Result<Material, DirError> {
        let trust_domain = self.read(TRUST_DOMAIN)?.trim().to_string();
        SpiffeId::new(&trust_domain, "default", "default")
            .map_err(|e| DirError::Invalid { path: self.file(TRUST_DOMAIN), reason: e.to_string() })?;
        let anchors = pem::certs(&self.read(ANCHORS)?)
            .map_err(|e| DirError::Invalid { path: self.file(ANCHORS), reason: e.to_string() })?;
        let issuer =
            IssuerCa::load(&self.read(ISSUER_CERT)?, &self.read(ISSUER_KEY)?, &anchors).map_err(|e| self.ca_err(e))?;
        let token_key = TokenKey::decode(&self.read(TOKEN_KEY)?)
            .map_err(|e| DirError::Invalid { path: self.file(TOKEN_KEY), reason: e.to_string() })?;
        Ok(Material { trust_domain, anchors, issuer, token_key })
    }

    /// A join token for one workload identity.
    pub fn mint_token(&self, namespace: &str, service_account: &str, ttl: Duration) -> Result<String, DirError> {
        let m = self.load()?;
        let id =
            SpiffeId::new(&m.trust_domain, namespace, service_account).map_err(|e| DirError::Order(e.to_string()))?;
        Ok(m.token_key.mint(&Claims::new(&id.to_string(), ttl)))
    }

    /// Rotation step 1: a new anchor beside the current ones.
    pub fn add_anchor(&self) -> Result<(), DirError> {
        let m = self.load()?;
        if m.anchors.len() > 1 {
            return Err(DirError::Order(
                "the bundle already holds more than one anchor: finish the current rotation (rotate issuer, then retire-anchor) first".into(),
            ));
        }
        let anchor = ca::generate_trust_anchor(&m.trust_domain, ANCHOR_VALIDITY).map_err(|e| self.ca_err(e))?;
        let bundle = format!("{}{}", pem::encode_certs(&m.anchors), anchor.cert_pem);
        // The old anchor's key is no longer needed to sign anything.
        self.write(ANCHOR_KEY, &anchor.key_pem, true)?;
        self.write(ANCHORS, &bundle, false)
    }

    /// Rotation step 2 (or a routine issuer renewal): a new issuer under the
    /// newest anchor.
    pub fn rotate_issuer(&self, validity: Duration) -> Result<(), DirError> {
        let m = self.load()?;
        let anchor_key = self.read(ANCHOR_KEY)?;
        let newest = m.anchors.last().ok_or_else(|| DirError::Order("no trust anchor".into()))?;
        let anchor = CertAndKey { cert_pem: pem::encode_certs(std::slice::from_ref(newest)), key_pem: anchor_key };
        let issuer = ca::generate_issuer(&m.trust_domain, &anchor, validity).map_err(|e| self.ca_err(e))?;
        // Key first, then certificate: a reader that sees a mismatched pair
        // refuses it and keeps the previous issuer until both are in place.
        self.write(ISSUER_KEY, &issuer.key_pem, true)?;
        self.write(ISSUER_CERT, &issuer.cert_pem, false)
    }

    /// Rotation step 3: keeps only the newest anchor. Refuses while the
    /// issuer still chains to an older one.
    pub fn retire_anchors(&self) -> Result<usize, DirError> {
        let m = self.load()?;
        let Some(newest) = m.anchors.last() else { return Ok(0) };
        let retired = m.anchors.len() - 1;
        if retired == 0 {
            return Ok(0);
        }
        IssuerCa::load(&self.read(ISSUER_CERT)?, &self.read(ISSUER_KEY)?, std::slice::from_ref(newest)).map_err(|_| {
            DirError::Order("the issuer is still signed by an older anchor: run `meshctl identity rotate issuer` first, and let leaves renew".into())
        })?;
        self.write(ANCHORS, &pem::encode_certs(std::slice::from_ref(newest)), false)?;
        Ok(retired)
    }

    /// A cheap fingerprint of the files' metadata, to notice changes.
    pub fn fingerprint(&self) -> Vec<(u64, i64, i64)> {
        use std::os::unix::fs::MetadataExt;
        [TRUST_DOMAIN, ANCHORS, ISSUER_CERT, ISSUER_KEY, TOKEN_KEY]
            .iter()
            .map(|n| std::fs::metadata(self.file(n)).map(|m| (m.len(), m.mtime(), m.mtime_nsec())).unwrap_or_default())
            .collect()
    }

    /// Subjects and expiries of the anchors and issuer, for `meshctl`.
    pub fn describe(&self) -> Result<Vec<(String, CertInfo)>, DirError> {
        let m = self.load()?;
        let mut out: Vec<(String, CertInfo)> =
            m.anchors.iter().filter_map(|a| CertInfo::parse(a).ok().map(|i| ("trust anchor".to_string(), i))).collect();
        if let Ok(i) = CertInfo::parse(m.issuer.cert()) {
            out.push(("issuer".into(), i));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::AUDIENCE;

    #[test]
    fn init_load_and_a_full_rotation() {
        let tmp = std::env::temp_dir().join(format!("mesh-identity-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let dir = IdentityDir::new(&tmp);
        dir.init("mesh.local", None).expect("init");
        assert!(matches!(dir.init("mesh.local", None), Err(DirError::Exists { .. })));
        let m = dir.load().expect("load");
        assert_eq!((m.trust_domain.as_str(), m.anchors.len()), ("mesh.local", 1));

        let t = dir.mint_token("default", "books", Duration::from_secs(60)).expect("token");
        let claims = m.token_key.verify(&t, AUDIENCE, crate::token::unix_now()).expect("valid");
        assert_eq!(claims.sub, "spiffe://mesh.local/ns/default/sa/books");

        assert!(matches!(dir.retire_anchors(), Ok(0)));
        dir.add_anchor().expect("add");
        assert_eq!(dir.load().expect("load").anchors.len(), 2);
        assert!(dir.add_anchor().is_err(), "one rotation at a time");
        assert!(matches!(dir.retire_anchors(), Err(DirError::Order(_))), "issuer still under the old anchor");
        dir.rotate_issuer(ISSUER_VALIDITY).expect("issuer");
        assert_eq!(dir.retire_anchors().expect("retire"), 1);
        let m = dir.load().expect("load after rotation");
        assert_eq!(m.anchors.len(), 1);
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn bad_files_name_themselves() {
        let tmp = std::env::temp_dir().join(format!("mesh-identity-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let dir = IdentityDir::new(&tmp);
        dir.init("mesh.local", None).expect("init");
        std::fs::write(tmp.join(ANCHORS), "not pem").expect("write");
        let e = dir.load().expect_err("bad anchors").to_string();
        assert!(e.contains("trust-anchors.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
