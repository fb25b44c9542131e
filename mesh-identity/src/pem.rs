//! Reading certificates and keys, and the facts the mesh needs from a
//! certificate: its SPIFFE ID (URI SAN), its validity, whether it is a CA.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Certificates or keys that do not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// No PEM block of the expected kind.
    #[error("no {0} found in PEM")]
    Missing(&'static str),
    /// A block that is not valid PEM or DER.
    #[error("invalid {what} PEM: {reason}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
}

/// Every certificate in a PEM bundle, in order.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PemError::Invalid { what: "certificate", reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(PemError::Missing("CERTIFICATE"));
    }
    for c in &certs {
        X509Certificate::from_der(c).map_err(|e| PemError::Invalid { what: "certificate", reason: e.to_string() })?;
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::Missing("PRIVATE KEY"),
        other => PemError::Invalid { what: "private key", reason: other.to_string() },
    })
}

/// Encodes certificates as a PEM bundle.
pub fn encode_certs(certs: &[CertificateDer<'_>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for c in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// What the mesh reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// URI subject alternative names (SPIFFE IDs).
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether it may sign certificates.
    pub is_ca: bool,
    /// The subject, printed.
    pub subject: String,
}

impl CertInfo {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, PemError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| PemError::Invalid { what: "certificate", reason: e.to_string() })?;
        let mut uris = Vec::new();
        let mut dns = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_string()),
                    GeneralName::DNSName(d) => dns.push((*d).to_string()),
                    _ => {}
                }
            }
        }
        let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        Ok(Self {
            uris,
            dns,
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
            is_ca: cert.is_ca(),
            subject: cert.subject().to_string(),
        })
    }

    /// The certificate's single SPIFFE ID, if it has exactly one URI SAN.
    pub fn spiffe_id(&self) -> Option<&str> {
        match self.uris.as_slice() {
            [one] if one.starts_with("spiffe://") => Some(one),
            _ => None,
        }
    }
}
