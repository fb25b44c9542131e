//! Opening connections to endpoints: TCP with a deadline, then mTLS when
//! the endpoint is meshed (discovery gave it an identity) and this proxy
//! has one.

use crate::metrics::Direction;
use crate::metrics::handshakes::Handshakes;
use crate::tls::{ClientIo, MeshProtocol, MeshTls};
use mesh_identity::tls::ServerName;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Opens connections with a deadline and the socket options a proxy wants.
#[derive(Debug, Clone)]
pub struct Connector {
    timeout: Duration,
    tls: Option<Arc<MeshTls>>,
    handshakes: Option<Handshakes>,
}

impl Connector {
    /// Connections give up after `timeout` (TCP and TLS each); with `tls`,
    /// meshed endpoints get mTLS.
    pub fn new(timeout: Duration, tls: Option<Arc<MeshTls>>) -> Self {
        Self { timeout, tls, handshakes: None }
    }

    /// Counts the mTLS handshakes this connector completes.
    pub fn with_handshakes(mut self, handshakes: Handshakes) -> Self {
        self.handshakes = Some(handshakes);
        self
    }

    /// The generation of this proxy's credentials (certificate and trust
    /// bundle) now; `None` without mTLS. A connection secured under an
    /// older generation was verified against a bundle (or presented a
    /// certificate) that may no longer be in force.
    pub fn generation(&self) -> Option<u64> {
        self.tls.as_ref().map(|t| t.generation())
    }

    /// Whether connections to an endpoint with `identity` will be mTLS.
    pub fn secures(&self, identity: Option<&str>) -> bool {
        identity.is_some() && self.tls.is_some()
    }

    /// Connects to `addr`; secures the connection when `identity` is known.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        protocol: MeshProtocol,
    ) -> io::Result<ClientIo> {
        match self.connect_once(addr, identity, protocol).await {
            // A resumed session whose server certificate no longer verifies
            // (the server renewed while handing out tickets that carry its
            // old one): the sessions for it are gone, so this is a full handshake.
            Err(e) if mesh_identity::tls::ResumptionRefused::is(&e) => {
                tracing::info!(%addr, error = %e, "resumed session refused; connecting again with a full handshake");
                if let Some(h) = &self.handshakes {
                    h.refused(Direction::outbound);
                }
                self.connect_once(addr, identity, protocol).await
            }
            r => r,
        }
    }

    async fn connect_once(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        protocol: MeshProtocol,
    ) -> io::Result<ClientIo> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {:?}", self.timeout))
        })??;
        // Small requests must not wait for Nagle's algorithm.
        stream.set_nodelay(true)?;
        let (Some(identity), Some(tls)) = (identity, &self.tls) else {
            return Ok(ClientIo::Plain(stream));
        };
        let config = tls.client_config(identity, protocol).map_err(io::Error::other)?;
        // Peers are named by identity, not DNS: an IP server name sends no SNI.
        let name = ServerName::IpAddress(addr.ip().into());
        let handshake = mesh_identity::tls::connect(config, name, stream);
        let tls = tokio::time::timeout(self.timeout.max(Duration::from_secs(3)), handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
            .map_err(|e| match e.get_ref() {
                // Keep the error's type: the caller tells refused resumptions apart.
                Some(inner) if inner.is::<mesh_identity::tls::ResumptionRefused>() => e,
                _ => io::Error::new(e.kind(), format!("TLS handshake with {identity}: {e}")),
            })?;
        if let Some(h) = &self.handshakes {
            h.record(Direction::outbound, &mesh_identity::tls::client_handshake(&tls));
        }
        Ok(ClientIo::Tls(Box::new(tls)))
    }
}
