//! mTLS between proxies: client configurations per expected identity (and
//! ALPN), the inbound acceptor, and the I/O type both kinds of connections
//! share.

use mesh_identity::tls::{
    ALPN_HTTP1, ALPN_HTTP2, ALPN_OPAQUE, ALPN_PROBE, ClientStream, Credentials, MESH_ALPNS, MeshClientConfig,
    MeshServerConfig, TlsError,
};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The protocol a mesh connection carries, named by ALPN so the server
/// needs no sniffing after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeshProtocol {
    /// HTTP/1.
    Http1,
    /// HTTP/2 and gRPC.
    Http2,
    /// Opaque TCP.
    Opaque,
    /// `meshctl check`'s live probe: answered by the server proxy itself.
    Probe,
}

impl MeshProtocol {
    /// Its ALPN id.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            MeshProtocol::Http1 => ALPN_HTTP1,
            MeshProtocol::Http2 => ALPN_HTTP2,
            MeshProtocol::Opaque => ALPN_OPAQUE,
            MeshProtocol::Probe => ALPN_PROBE,
        }
    }

    /// The protocol an ALPN id names.
    pub fn from_alpn(alpn: &[u8]) -> Option<Self> {
        [MeshProtocol::Http1, MeshProtocol::Http2, MeshProtocol::Opaque, MeshProtocol::Probe]
            .into_iter()
            .find(|p| p.alpn() == alpn)
    }
}

/// The proxy's TLS state: its live credentials and derived configurations.
#[derive(Debug)]
pub struct MeshTls {
    creds: Arc<Credentials>,
    clients: Mutex<Clients>,
    server: MeshServerConfig,
}

/// Client configurations (each with its own TLS session cache) by expected
/// identity and protocol, for one generation of the credentials: a new
/// bundle or leaf drops them all, so no session resumes across a change.
#[derive(Debug, Default)]
struct Clients {
    generation: u64,
    configs: HashMap<(String, MeshProtocol), MeshClientConfig>,
}

impl MeshTls {
    /// The credentials' generation (it changes with the certificate or the
    /// trust bundle).
    pub fn generation(&self) -> u64 {
        self.creds.generation()
    }

    /// TLS over `creds`.
    pub fn new(creds: Arc<Credentials>) -> Result<Arc<Self>, TlsError> {
        let server = creds.server_config(true, &MESH_ALPNS)?;
        let clients = Mutex::new(Clients { generation: creds.generation(), configs: HashMap::new() });
        Ok(Arc::new(Self { creds, clients, server }))
    }

    /// The inbound server configuration (client certificates required).
    pub fn server_config(&self) -> MeshServerConfig {
        self.server.clone()
    }

    /// A client configuration expecting `identity`, offering `protocol`.
    pub fn client_config(&self, identity: &str, protocol: MeshProtocol) -> Result<MeshClientConfig, TlsError> {
        let mut cache = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.creds.generation();
        if cache.generation != generation {
            *cache = Clients { generation, configs: HashMap::new() };
        }
        if let Some(c) = cache.configs.get(&(identity.to_string(), protocol)) {
            return Ok(c.clone());
        }
        let c = self.creds.client_config(identity, &[protocol.alpn()])?;
        cache.configs.insert((identity.to_string(), protocol), c.clone());
        Ok(c)
    }
}

/// Whether a ClientHello's ALPN list marks a mesh peer.
pub fn is_mesh_hello(alpns: &[Vec<u8>]) -> bool {
    alpns.iter().any(|a| MESH_ALPNS.contains(&a.as_slice()))
}

/// A connection to an endpoint: plaintext, or mTLS to a meshed peer.
#[derive(Debug)]
pub enum ClientIo {
    /// Plaintext.
    Plain(TcpStream),
    /// mTLS.
    Tls(Box<ClientStream<TcpStream>>),
}

impl ClientIo {
    /// The SPIFFE ID the peer's certificate names (mTLS only).
    pub fn peer_identity(&self) -> Option<String> {
        match self {
            ClientIo::Plain(_) => None,
            ClientIo::Tls(s) => mesh_identity::tls::client_peer_identity(s),
        }
    }

    /// The negotiated TLS version (mTLS only).
    pub fn tls_version(&self) -> Option<String> {
        match self {
            ClientIo::Plain(_) => None,
            ClientIo::Tls(s) => mesh_identity::tls::client_tls_version(s),
        }
    }

    /// When the peer's certificate expires (mTLS only).
    pub fn peer_not_after(&self) -> Option<std::time::SystemTime> {
        match self {
            ClientIo::Plain(_) => None,
            ClientIo::Tls(s) => mesh_identity::tls::client_peer_not_after(s),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            ClientIo::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            ClientIo::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(io) => io.is_write_vectored(),
            ClientIo::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}
