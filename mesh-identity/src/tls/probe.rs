//! The TLS client of HTTPS health probes: what kubelet does for an
//! `httpGet` probe with `scheme: HTTPS` (no certificate verification: the
//! app's serving certificate is usually self-signed or names a Service, not
//! the loopback address the probe dials). Used for nothing else: a
//! connection made with it proves nothing about who answered.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// Accepts any server certificate; handshake signatures are still checked
/// (the server holds the key of the certificate it sent).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration for health probes of the local app over HTTPS:
/// TLS 1.2 and 1.3, no certificate verification (as kubelet), no client
/// certificate, HTTP/1.1 only.
pub fn probe_client_config() -> Result<Arc<ClientConfig>, super::TlsError> {
    let provider = crate::provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Catches a probe client that verifies the app's certificate (a
    /// self-signed one, naming nothing, must do) or that skips the
    /// handshake's signature check (a server must hold its certificate's key).
    #[tokio::test]
    async fn probes_accept_any_certificate_but_not_a_forged_handshake() {
        let ca = crate::ca::generate_trust_anchor("app.local", std::time::Duration::from_secs(3600)).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(crate::pem::certs(&ca.cert_pem).unwrap(), crate::pem::private_key(&ca.key_pem).unwrap())
            .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(s).await.unwrap();
            tls.write_all(b"ok").await.unwrap();
            tls.shutdown().await.unwrap();
        });
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = super::super::server_name("127.0.0.1").unwrap();
        let mut tls = super::super::connect(probe_client_config().unwrap(), name, s).await.expect("handshake");
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ok");
    }
}
