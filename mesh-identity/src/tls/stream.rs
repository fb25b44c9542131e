//! TLS over any byte stream: connecting as a client, accepting as a server
//! (with the peer's SPIFFE ID), and a client configuration for servers
//! outside the mesh. Other crates use these rather than rustls directly.

use super::{TlsError, peer_identity};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

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
pub async fn connect<IO>(config: Arc<ClientConfig>, server: ServerName<'static>, io: IO) -> io::Result<ClientStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(config).connect(server, io).await
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
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<Accepted<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = tokio_rustls::TlsAcceptor::from(config).accept(io).await?;
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
