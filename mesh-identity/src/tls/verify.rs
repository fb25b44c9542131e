//! Certificate verification by SPIFFE ID against the live trust bundle, and
//! certificate resolution from the live leaf.

use super::Credentials;
use crate::pem::CertInfo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// Accepts a server whose chain leads to the bundle and whose SPIFFE ID is
/// the expected one. The TLS server name is ignored: mesh peers are named by
/// identity, and connections address them by IP.
#[derive(Debug)]
pub struct ServerVerifier {
    creds: Arc<Credentials>,
    expected: String,
}

impl ServerVerifier {
    /// A verifier expecting `expected`.
    pub fn new(creds: Arc<Credentials>, expected: &str) -> Self {
        Self { creds, expected: expected.to_string() }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let bundle = self.creds.bundle();
        let algs = self.creds.provider().signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&parsed, &bundle.roots, intermediates, now, algs)?;
        let info = CertInfo::parse(end_entity).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        match info.spiffe_id() {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            got => Err(Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
                IdentityMismatch { expected: self.expected.clone(), got: got.map(str::to_string) },
            ))))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signatures::tls12(&self.creds, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signatures::tls13(&self.creds, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes(&self.creds)
    }
}

/// The server presented another identity than discovery said to expect.
#[derive(Debug, thiserror::Error)]
#[error("peer presented identity {got:?}, expected {expected}")]
pub struct IdentityMismatch {
    expected: String,
    got: Option<String>,
}

/// Verifies client certificates against the live bundle.
#[derive(Debug)]
pub struct ClientVerifier {
    creds: Arc<Credentials>,
    mandatory: bool,
}

impl ClientVerifier {
    /// A verifier; `mandatory` refuses clients without a certificate.
    pub fn new(creds: Arc<Credentials>, mandatory: bool) -> Self {
        Self { creds, mandatory }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: every mesh client has exactly one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.creds.bundle().client_verifier.verify_client_cert(end_entity, intermediates, now)?;
        // A mesh client must carry a SPIFFE ID, or authorization has nothing to go on.
        let info = CertInfo::parse(end_entity).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if info.spiffe_id().is_none() {
            return Err(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signatures::tls12(&self.creds, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signatures::tls13(&self.creds, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes(&self.creds)
    }
}

/// Presents the current leaf, on both ends of a handshake.
#[derive(Debug)]
pub struct LeafResolver {
    creds: Arc<Credentials>,
}

impl LeafResolver {
    /// A resolver over `creds`.
    pub fn new(creds: Arc<Credentials>) -> Self {
        Self { creds }
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.creds.leaf()
    }
}

impl ResolvesClientCert for LeafResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.creds.leaf()
    }

    fn has_certs(&self) -> bool {
        self.creds.leaf().is_some()
    }
}

/// Handshake signatures, checked with the mesh's one crypto provider (the
/// same for both ends of a handshake).
mod signatures {
    use super::Credentials;
    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::{DigitallySignedStruct, Error, SignatureScheme};
    use rustls_pki_types::CertificateDer;

    pub(super) fn tls12(
        c: &Credentials,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &c.provider().signature_verification_algorithms)
    }

    pub(super) fn tls13(
        c: &Credentials,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &c.provider().signature_verification_algorithms)
    }

    pub(super) fn schemes(c: &Credentials) -> Vec<SignatureScheme> {
        c.provider().signature_verification_algorithms.supported_schemes()
    }
}
