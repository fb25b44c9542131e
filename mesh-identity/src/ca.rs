//! The certificate authority: trust anchors (roots), the issuer (an
//! intermediate held by the control plane) and the leaves it signs.
//!
//! Trust anchor → issuer → leaf. Proxies trust the anchors; the control plane
//! signs with the issuer, so the long-lived root key can stay offline and an
//! issuer can be replaced (or an anchor rotated) without touching workloads.

use crate::SpiffeId;
use crate::pem::{CertInfo, PemError};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Leaves are backdated by this much to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why CA material could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Certificate or key generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// PEM that does not parse.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// An issuer certificate that is not a CA.
    #[error("the issuer certificate is not a CA certificate (basicConstraints CA:TRUE is required)")]
    NotACa,
    /// An issuer not signed by any trust anchor.
    #[error(
        "the issuer certificate is not signed by any trust anchor in the bundle; re-issue it with `meshctl identity rotate issuer`"
    )]
    NotSignedByAnchor,
    /// Outside its validity period.
    #[error("the {what} certificate is not valid now (valid {not_before:?} to {not_after:?})")]
    Expired {
        /// Which certificate.
        what: &'static str,
        /// Start of validity.
        not_before: SystemTime,
        /// End of validity.
        not_after: SystemTime,
    },
    /// The issuer key does not match the issuer certificate.
    #[error("the issuer key does not belong to the issuer certificate")]
    KeyMismatch,
}

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a valid, self-signed PKCS#10 request.
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The CSR names another identity than the proof allows.
    #[error("the CSR asks for {requested:?} but the proof only allows {allowed}")]
    WrongIdentity {
        /// What the CSR asked for (its SANs).
        requested: Vec<String>,
        /// What the proof allows.
        allowed: String,
    },
}

/// A certificate with its key, both PEM.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

fn odt(t: SystemTime) -> OffsetDateTime {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn ca_params(cn: &str, validity: Duration, path_len: Option<u8>) -> CertificateParams {
    let now = SystemTime::now();
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = odt(now - BACKDATE);
    p.not_after = odt(now + validity);
    p.serial_number = Some(random_serial());
    p
}

/// Generates a self-signed trust anchor (root) for `trust_domain`.
pub fn generate_trust_anchor(trust_domain: &str, validity: Duration) -> Result<CertAndKey, CaError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(&format!("{trust_domain} trust anchor"), validity, Some(1)).self_signed(&key)?;
    Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Generates an issuer (intermediate CA) signed by `anchor`.
pub fn generate_issuer(trust_domain: &str, anchor: &CertAndKey, validity: Duration) -> Result<CertAndKey, CaError> {
    let anchor_key = KeyPair::from_pem(&anchor.key_pem)?;
    let anchor_issuer = Issuer::from_ca_cert_pem(&anchor.cert_pem, anchor_key)?;
    let key = KeyPair::generate()?;
    let params = ca_params(&format!("{trust_domain} issuer"), validity, Some(0));
    let cert = params.signed_by(&key, &anchor_issuer)?;
    Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A signed leaf: the chain to present (leaf, then issuer) and its expiry.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Leaf first, then the issuer.
    pub chain: Vec<CertificateDer<'static>>,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

/// The control plane's signing authority.
pub struct IssuerCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    info: CertInfo,
}

impl std::fmt::Debug for IssuerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerCa")
            .field("subject", &self.info.subject)
            .field("not_after", &self.info.not_after)
            .finish()
    }
}

impl IssuerCa {
    /// Loads an issuer and checks it: a CA, valid now, signed by one of
    /// `anchors`, and its key matching its certificate.
    pub fn load(cert_pem: &str, key_pem: &str, anchors: &[CertificateDer<'_>]) -> Result<Self, CaError> {
        let cert = crate::pem::certs(cert_pem)?.remove(0);
        let info = CertInfo::parse(&cert)?;
        if !info.is_ca {
            return Err(CaError::NotACa);
        }
        let now = SystemTime::now();
        if now < info.not_before || now >= info.not_after {
            return Err(CaError::Expired { what: "issuer", not_before: info.not_before, not_after: info.not_after });
        }
        let (_, parsed) = X509Certificate::from_der(&cert)
            .map_err(|e| PemError::Invalid { what: "certificate", reason: e.to_string() })?;
        let signed = anchors.iter().any(|a| {
            X509Certificate::from_der(a).is_ok_and(|(_, a)| parsed.verify_signature(Some(a.public_key())).is_ok())
        });
        if !signed {
            return Err(CaError::NotSignedByAnchor);
        }
        let key = KeyPair::from_pem(key_pem)?;
        if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(Self { issuer, cert, info })
    }

    /// The issuer's certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// When the issuer itself expires.
    pub fn not_after(&self) -> SystemTime {
        self.info.not_after
    }

    fn leaf_params(&self, id: &SpiffeId, dns: &[String], ttl: Duration) -> Result<CertificateParams, CaError> {
        let now = SystemTime::now();
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(id.service_account());
        let mut sans = vec![SanType::URI(id.to_string().try_into()?)];
        for d in dns {
            sans.push(SanType::DnsName(d.clone().try_into()?));
        }
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = odt(now - BACKDATE);
        // A leaf never outlives its issuer.
        p.not_after = odt((now + ttl).min(self.info.not_after));
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }

    /// Signs a CSR for `identity`. Only the CSR's public key is used: every
    /// other field of the certificate is the CA's choice, and the CSR must
    /// name exactly `identity` and nothing else.
    pub fn sign_csr(&self, csr_der: &[u8], identity: &SpiffeId, ttl: Duration) -> Result<Leaf, CsrError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_string(),
                SanType::DnsName(d) => format!("dns:{}", d.as_str()),
                other => format!("{other:?}"),
            })
            .collect();
        if requested != [identity.to_string()] {
            return Err(CsrError::WrongIdentity { requested, allowed: identity.to_string() });
        }
        let params = self.leaf_params(identity, &[], ttl).map_err(|e| CsrError::Malformed(e.to_string()))?;
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(|e| CsrError::Malformed(e.to_string()))?;
        let leaf = cert.der().clone();
        let not_after = CertInfo::parse(&leaf).map(|i| i.not_after).unwrap_or_else(|_| SystemTime::now());
        Ok(Leaf { chain: vec![leaf, self.cert.clone()], not_after })
    }

    /// Issues a certificate and key for the CA's own use (the control plane's
    /// serving certificate), with extra DNS names.
    pub fn issue_with_key(
        &self,
        identity: &SpiffeId,
        dns: &[String],
        ttl: Duration,
    ) -> Result<(Leaf, KeyPair), CaError> {
        let key = KeyPair::generate()?;
        let cert = self.leaf_params(identity, dns, ttl)?.signed_by(&key, &self.issuer)?;
        let leaf = cert.der().clone();
        let not_after = CertInfo::parse(&leaf)?.not_after;
        Ok((Leaf { chain: vec![leaf, self.cert.clone()], not_after }, key))
    }
}

/// A fresh key pair and a CSR for `identity` (the proxy's side of Certify).
/// The key never leaves the process.
pub fn generate_csr(identity: &SpiffeId) -> Result<(KeyPair, Vec<u8>), CaError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(identity.service_account());
    p.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr = p.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

#[cfg(test)]
mod tests;
