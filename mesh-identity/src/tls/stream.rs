//! TLS over any byte stream: connecting as a client, accepting as a server
//! (with the peer's SPIFFE ID), and a client configuration for servers
//! outside the mesh. Other crates use these rather than rustls directly.

use super::verify::{ClientVerifier, ServerVerifier};
use super::{TlsError, peer_identity};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A server configuration, with the verifier that checks resumed sessions
/// again (built by [`Credentials::server_config`](super::Credentials::server_config)).
/// One made from a bare rustls configuration checks nothing more than rustls does.
#[derive(Debug, Clone)]
pub struct MeshServerConfig {
    config: Arc<ServerConfig>,
    verifier: Option<Arc<ClientVerifier>>,
}

impl MeshServerConfig {
    pub(super) fn verified(config: Arc<ServerConfig>, verifier: Arc<ClientVerifier>) -> Self {
        Self { config, verifier: Some(verifier) }
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<ServerConfig> {
        &self.config
    }
}

impl From<Arc<ServerConfig>> for MeshServerConfig {
    fn from(config: Arc<ServerConfig>) -> Self {
        Self { config, verifier: None }
    }
}

/// A client configuration, with the verifier that checks resumed sessions
/// again (built by [`Credentials::client_config`](super::Credentials::client_config)).
/// One made from a bare rustls configuration checks nothing more than rustls does.
#[derive(Debug, Clone)]
pub struct MeshClientConfig {
    config: Arc<ClientConfig>,
    verifier: Option<Arc<ServerVerifier>>,
    sessions: Option<Arc<ClientSessionMemoryCache>>,
}

impl MeshClientConfig {
    pub(super) fn verified(
        config: Arc<ClientConfig>,
        verifier: Arc<ServerVerifier>,
        sessions: Arc<ClientSessionMemoryCache>,
    ) -> Self {
        Self { config, verifier: Some(verifier), sessions: Some(sessions) }
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<ClientConfig> {
        &self.config
    }
}

impl From<Arc<ClientConfig>> for MeshClientConfig {
    fn from(config: Arc<ClientConfig>) -> Self {
        Self { config, verifier: None, sessions: None }
    }
}

/// A resumed TLS session whose peer certificate (restored from the session
/// ticket) no longer verifies now: expired, or no longer chained to the
/// trust bundle. The connection is closed; the peer must do a full handshake.
///
/// A client that gets this from [`connect`] has dropped every session it
/// kept for that server: connecting again does a full handshake. (A server
/// may renew its certificate while it resumes a session and then hand out
/// tickets that still carry the old one, so a client can meet this from
/// an honest server.)
#[derive(Debug, thiserror::Error)]
#[error("resumed TLS session refused: the peer's certificate from the ticket no longer verifies: {0}")]
pub struct ResumptionRefused(pub String);

impl ResumptionRefused {
    /// Whether `e` is (or wraps) a refused resumption.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|i| i.is::<ResumptionRefused>())
    }

    fn error(reason: String) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, ResumptionRefused(reason))
    }
}

/// The chain of a resumed session, split into leaf and intermediates.
fn split<'a>(
    chain: Option<&'a [CertificateDer<'static>]>,
) -> Option<(&'a CertificateDer<'static>, &'a [CertificateDer<'static>])> {
    chain?.split_first()
}

/// The client side of a TLS connection over `IO`.
pub type ClientStream<IO> = tokio_rustls::client::TlsStream<IO>;
/// The server side of a TLS connection over `IO`.
pub type ServerStream<IO> = tokio_rustls::server::TlsStream<IO>;

/// The server name for `host`: an IP address (which sends no SNI) when it
/// parses as one (brackets allowed), otherwise a DNS name.
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.to_string()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
    }
}

/// Runs a client handshake over `io` with `config`, naming the server `server`.
///
/// A resumed session (for which rustls verifies nothing: the server's chain
/// comes from the session cache) is verified again, now, with the
/// configuration's verifier; one that fails is closed with [`ResumptionRefused`].
pub async fn connect<IO>(
    config: impl Into<MeshClientConfig>,
    server: ServerName<'static>,
    io: IO,
) -> io::Result<ClientStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = config.into();
    let mut stream = tokio_rustls::TlsConnector::from(config.config).connect(server.clone(), io).await?;
    let conn = stream.get_ref().1;
    if let (Some(verifier), Some(rustls::HandshakeKind::Resumed)) = (config.verifier, conn.handshake_kind()) {
        let checked = match split(conn.peer_certificates()) {
            None => Err("no server certificate in the session".to_string()),
            Some((leaf, rest)) => verifier
                .verify_server_cert(leaf, rest, &server, &[], UnixTime::now())
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        if let Err(reason) = checked {
            tracing::info!(%reason, "resumed TLS session with the server refused");
            // The other tickets for this server may carry the same chain.
            if let Some(sessions) = &config.sessions {
                while sessions.take_tls13_ticket(&server).is_some() {}
            }
            let _ = stream.shutdown().await;
            return Err(ResumptionRefused::error(reason));
        }
    }
    Ok(stream)
}

/// How a completed handshake went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The session was resumed from a ticket (no certificate exchange).
    pub resumed: bool,
    /// The negotiated key exchange group (`X25519MLKEM768`, `X25519`...).
    pub group: Option<String>,
}

impl Handshake {
    fn of(conn: &rustls::CommonState) -> Self {
        Self {
            resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
            group: conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())),
        }
    }
}

/// How the client handshake of `stream` went.
pub fn client_handshake<IO>(stream: &ClientStream<IO>) -> Handshake {
    Handshake::of(stream.get_ref().1)
}

/// When the server's certificate in `stream` expires (`None`: it presented
/// none, or it does not parse). A connection must not be used past it.
pub fn client_peer_not_after<IO>(stream: &ClientStream<IO>) -> Option<std::time::SystemTime> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    crate::pem::CertInfo::parse(leaf).ok().map(|i| i.not_after)
}

/// The SPIFFE ID in the certificate the server of `stream` presented
/// (already verified against the expected identity by the handshake).
pub fn client_peer_identity<IO>(stream: &ClientStream<IO>) -> Option<String> {
    super::peer_identity(stream.get_ref().1.peer_certificates())
}

/// The TLS version `stream` negotiated (`TLSv1.3`).
pub fn client_tls_version<IO>(stream: &ClientStream<IO>) -> Option<String> {
    stream.get_ref().1.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    })
}

/// A finished server handshake: the stream, and what the client presented.
#[derive(Debug)]
pub struct Accepted<IO> {
    stream: ServerStream<IO>,
    peer_id: Option<String>,
}

impl<IO> Accepted<IO> {
    /// The client's SPIFFE ID, when it presented a certificate (already
    /// verified against the configuration's trust) that names one.
    pub fn peer_id(&self) -> Option<&str> {
        self.peer_id.as_deref()
    }

    /// How the handshake went.
    pub fn handshake(&self) -> Handshake {
        Handshake::of(self.stream.get_ref().1)
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }

    /// The stream and the client's SPIFFE ID.
    pub fn into_parts(self) -> (ServerStream<IO>, Option<String>) {
        (self.stream, self.peer_id)
    }
}

/// Runs a server handshake over `io` with `config` (for instance
/// [`Credentials::server_config`](super::Credentials::server_config)).
///
/// rustls restores a resumed session's client chain from the ticket without
/// verifying it; here it is verified again, now, against the bundle in
/// force, so a client whose certificate expired or whose anchor was retired
/// cannot keep its identity by reconnecting with tickets. Such a session is
/// closed with [`ResumptionRefused`] (the client's next attempt, without the
/// ticket, is a full handshake).
pub async fn accept<IO>(config: impl Into<MeshServerConfig>, io: IO) -> io::Result<Accepted<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = config.into();
    let mut stream = tokio_rustls::TlsAcceptor::from(config.config).accept(io).await?;
    let conn = stream.get_ref().1;
    if let (Some(verifier), Some(rustls::HandshakeKind::Resumed)) = (config.verifier, conn.handshake_kind()) {
        let checked = match split(conn.peer_certificates()) {
            None if verifier.client_auth_mandatory() => Err("no client certificate in the session".to_string()),
            None => Ok(()),
            Some((leaf, rest)) => {
                verifier.verify_client_cert(leaf, rest, UnixTime::now()).map(drop).map_err(|e| e.to_string())
            }
        };
        if let Err(reason) = checked {
            tracing::info!(%reason, "resumed TLS session refused");
            let _ = stream.shutdown().await;
            return Err(ResumptionRefused::error(reason));
        }
    }
    let peer_id = peer_identity(stream.get_ref().1.peer_certificates());
    Ok(Accepted { stream, peer_id })
}

/// A client configuration for a server outside the mesh (such as the
/// Kubernetes API server): its chain must lead to one of `roots` and its
/// certificate must name the host dialled, as for any HTTPS client. TLS 1.2
/// and 1.3, no client certificate.
pub fn web_client_config(roots: Vec<CertificateDer<'static>>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(roots);
    if added == 0 {
        return Err(TlsError::Bundle(format!("{ignored} certificate(s) could not be used as roots")));
    }
    let config = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
