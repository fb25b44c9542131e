//! rustls configurations for the mesh, with credentials that change live.
//!
//! [`Credentials`] holds a workload's current leaf certificate and the
//! current trust bundle. Configurations built from it read both at each
//! handshake, so renewing the leaf or rotating trust anchors needs no new
//! configuration and never touches established connections.
//!
//! Only TLS 1.3; key exchange prefers X25519MLKEM768 (hybrid post-quantum),
//! then X25519. Peers are authenticated by their SPIFFE ID (URI SAN), not by
//! DNS names.
//!
//! This is the mesh's only door to rustls: [`connect`] and [`accept`] run
//! handshakes over any stream, and the few rustls types that appear in this
//! API (configurations, certificates, keys, server names) are re-exported
//! here, so no other crate depends on rustls directly.

mod probe;
mod stream;
mod tickets;
mod verify;

use crate::pem::CertInfo;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

pub use probe::probe_client_config;
pub use rustls::{ClientConfig, ServerConfig};
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
pub use stream::{
    Accepted, ClientStream, Handshake, MeshClientConfig, MeshServerConfig, ResumptionRefused, ServerStream, accept,
    client_handshake, client_peer_identity, client_peer_not_after, client_tls_version, connect, server_name,
    web_client_config,
};
pub use tickets::MAX_TICKET_LIFETIME;
pub use verify::{ClientVerifier, LeafResolver, ServerVerifier};

/// ALPN a client proxy offers for HTTP/1 carried between proxies.
pub const ALPN_HTTP1: &[u8] = b"mesh/http1";
/// ALPN for HTTP/2 (and gRPC) between proxies.
pub const ALPN_HTTP2: &[u8] = b"mesh/h2";
/// ALPN for opaque TCP between proxies: the server must not sniff.
pub const ALPN_OPAQUE: &[u8] = b"mesh/opaque";
/// ALPN of `meshctl check`'s live probe: the server proxy answers it
/// itself (its authorization decision for the client), never the app.
pub const ALPN_PROBE: &[u8] = b"mesh/probe";
/// Every mesh ALPN; a ClientHello offering one of them is a mesh peer.
pub const MESH_ALPNS: [&[u8]; 4] = [ALPN_HTTP1, ALPN_HTTP2, ALPN_OPAQUE, ALPN_PROBE];

/// TLS set-up that failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A trust bundle with no usable anchor.
    #[error("the trust bundle holds no usable trust anchor: {0}")]
    Bundle(String),
    /// A leaf certificate or key rustls refuses.
    #[error("the certificate or key cannot be used: {0}")]
    Leaf(String),
    /// rustls rejected the configuration.
    #[error("TLS configuration error: {0}")]
    Config(#[from] rustls::Error),
}

/// The trust anchors in force.
#[derive(Debug)]
pub struct Bundle {
    /// Anchors as a root store.
    pub roots: Arc<RootCertStore>,
    /// Anchors as DER, in the order given.
    pub anchors: Vec<CertificateDer<'static>>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

/// A workload's live credentials: its current leaf and the trust bundle.
#[derive(Debug)]
pub struct Credentials {
    provider: Arc<CryptoProvider>,
    bundle: RwLock<Arc<Bundle>>,
    leaf: RwLock<Option<Arc<CertifiedKey>>>,
    leaf_info: RwLock<Option<CertInfo>>,
    /// Bumped by every change of bundle or leaf: what resumption state
    /// (ticket keys, client session caches) is keyed by.
    generation: AtomicU64,
}

impl Credentials {
    /// Credentials trusting `anchors`, with no leaf yet.
    pub fn new(anchors: Vec<CertificateDer<'static>>) -> Result<Arc<Self>, TlsError> {
        let provider = crate::provider();
        let bundle = make_bundle(&provider, anchors)?;
        Ok(Arc::new(Self {
            provider,
            bundle: RwLock::new(Arc::new(bundle)),
            leaf: RwLock::new(None),
            leaf_info: RwLock::new(None),
            generation: AtomicU64::new(0),
        }))
    }

    /// Replaces the trust bundle; new handshakes use it at once.
    pub fn set_bundle(&self, anchors: Vec<CertificateDer<'static>>) -> Result<(), TlsError> {
        let bundle = make_bundle(&self.provider, anchors)?;
        *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(bundle);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The bundle in force.
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs a new leaf (chain: leaf first) with its private key; new
    /// handshakes present it at once.
    pub fn set_leaf(&self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<(), TlsError> {
        let first = chain.first().ok_or_else(|| TlsError::Leaf("empty certificate chain".into()))?;
        let info = CertInfo::parse(first).map_err(|e| TlsError::Leaf(e.to_string()))?;
        let signing = self.provider.key_provider.load_private_key(key).map_err(|e| TlsError::Leaf(e.to_string()))?;
        let ck = CertifiedKey::new(chain, signing);
        ck.keys_match().map_err(|e| TlsError::Leaf(format!("key does not match certificate: {e}")))?;
        *self.leaf.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(ck));
        *self.leaf_info.write().unwrap_or_else(|p| p.into_inner()) = Some(info);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The current leaf, if any.
    pub fn leaf(&self) -> Option<Arc<CertifiedKey>> {
        self.leaf.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Facts about the current leaf (identity, expiry), if any.
    pub fn leaf_info(&self) -> Option<CertInfo> {
        self.leaf_info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a leaf is installed and not expired.
    pub fn has_valid_leaf(&self) -> bool {
        self.leaf_info().is_some_and(|i| SystemTime::now() < i.not_after)
    }

    /// Changes with every new bundle or leaf. Resumption state is tied to
    /// one generation: a TLS session resumed across a change would carry
    /// credentials verified under the previous ones.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The crypto provider.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// A server configuration: presents the current leaf; clients must
    /// present a certificate from the bundle when `require_client_cert`.
    ///
    /// Sessions resume from stateless tickets whose keys change with the
    /// credentials' [generation](Self::generation) and live at most
    /// [`MAX_TICKET_LIFETIME`]; [`accept`] verifies the client chain of
    /// every resumed session again, against the bundle and clock of now.
    pub fn server_config(
        self: &Arc<Self>,
        require_client_cert: bool,
        alpn: &[&[u8]],
    ) -> Result<MeshServerConfig, TlsError> {
        let verifier = Arc::new(ClientVerifier::new(self.clone(), require_client_cert));
        let mut c = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(Arc::new(LeafResolver::new(self.clone())));
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        // Stateless resumption: reconnecting peers skip the full handshake.
        c.ticketer = Arc::new(tickets::Tickets::new(self.clone())?);
        Ok(MeshServerConfig::verified(Arc::new(c), verifier))
    }

    /// A client configuration that accepts only a server presenting
    /// `expected` (a SPIFFE ID) chained to the bundle, and presents the
    /// current leaf when it has one.
    ///
    /// Each configuration has its own session cache (rustls resumes only
    /// with the verifier a session was verified by), so a session is reused
    /// only for the same expected identity; [`connect`] verifies the server
    /// chain of every resumed session again. Callers that cache
    /// configurations should key them by [generation](Self::generation) too.
    pub fn client_config(self: &Arc<Self>, expected: &str, alpn: &[&[u8]]) -> Result<MeshClientConfig, TlsError> {
        let verifier = Arc::new(ServerVerifier::new(self.clone(), expected));
        let mut c = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(Arc::new(LeafResolver::new(self.clone())));
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let sessions = Arc::new(rustls::client::ClientSessionMemoryCache::new(32));
        c.resumption = rustls::client::Resumption::store(sessions.clone());
        Ok(MeshClientConfig::verified(Arc::new(c), verifier, sessions))
    }
}

fn make_bundle(provider: &Arc<CryptoProvider>, anchors: Vec<CertificateDer<'static>>) -> Result<Bundle, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(anchors.iter().cloned());
    if added == 0 {
        return Err(TlsError::Bundle(format!("{ignored} certificate(s) could not be used as anchors")));
    }
    let roots = Arc::new(roots);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Bundle(e.to_string()))?;
    Ok(Bundle { roots, anchors, client_verifier })
}

/// The SPIFFE ID a peer's (already verified) certificate chain presents.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    CertInfo::parse(leaf).ok()?.spiffe_id().map(str::to_string)
}

#[cfg(test)]
mod tests;
