//! A minimal relay, the floor any two-process proxy pair pays: bytes copied
//! per connection, no HTTP parsing, optionally TLS 1.3 between two relays.
//!
//! `cargo xtask bench` runs a pair of them (`mesh-test-app relay`) beside
//! the mesh: client relay → (plaintext or mTLS) → server relay → app. What
//! the pair costs per request is what the kernel and a byte copy (and,
//! with TLS, the records' crypto) cost on this machine: the part of a
//! proxy pair's CPU no proxy can cut. TLS uses the mesh's own setup
//! ([`mesh_identity::tls`]: same provider, TLS 1.3 only, SPIFFE IDs checked).

use anyhow::Context;
use mesh_identity::tls::{self, Credentials, MeshClientConfig, MeshServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// How a relay treats the hop to or from the other relay.
#[derive(Clone)]
pub enum Hop {
    /// Plaintext both ways.
    Plain,
    /// Accepts plaintext, connects with TLS to a server presenting the SPIFFE ID it was built for.
    Connect(MeshClientConfig),
    /// Accepts TLS from a client presenting `peer` (a SPIFFE ID), connects in plaintext.
    Accept {
        /// The server configuration (client certificates required).
        config: MeshServerConfig,
        /// The SPIFFE ID the client relay must present.
        peer: String,
    },
}

/// Which side of the TLS hop a relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Side {
    /// The client relay: TLS out.
    Connect,
    /// The server relay: TLS in.
    Accept,
}

/// PEM text of a relay's credentials.
#[derive(Debug, Clone, Copy)]
pub struct Pems<'a> {
    /// Its certificate chain, leaf first.
    pub chain: &'a str,
    /// Its private key.
    pub key: &'a str,
    /// The trust anchors the other relay's chain must lead to.
    pub anchors: &'a str,
}

impl Hop {
    /// The TLS hop for `side`, presenting `pems`' leaf and requiring the
    /// other relay to present `peer_id`.
    pub fn tls(side: Side, pems: Pems<'_>, peer_id: &str) -> anyhow::Result<Self> {
        let anchors = mesh_identity::pem::certs(pems.anchors).context("invalid trust anchors")?;
        let chain = mesh_identity::pem::certs(pems.chain).context("invalid certificate chain")?;
        let key = mesh_identity::pem::private_key(pems.key).context("invalid private key")?;
        let creds = Credentials::new(anchors).context("unusable trust anchors")?;
        creds.set_leaf(chain, key).context("unusable certificate or key")?;
        let alpn = [tls::ALPN_OPAQUE];
        Ok(match side {
            Side::Connect => Hop::Connect(creds.client_config(peer_id, &alpn)?),
            Side::Accept => Hop::Accept { config: creds.server_config(true, &alpn)?, peer: peer_id.to_string() },
        })
    }
}

/// Accepts connections on `listener` until it fails, relaying each to `to`
/// on a task of its own; a connection's failure is logged, not fatal.
pub async fn serve(listener: TcpListener, to: SocketAddr, hop: Hop) -> std::io::Result<()> {
    let hop = Arc::new(hop);
    loop {
        let (inbound, from) = listener.accept().await?;
        let hop = hop.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(inbound, to, &hop).await {
                eprintln!("relay from {from}: {e:#}");
            }
        });
    }
}

/// Relays one accepted connection to `to` until both directions ended.
async fn relay(inbound: TcpStream, to: SocketAddr, hop: &Hop) -> anyhow::Result<()> {
    inbound.set_nodelay(true)?;
    let connect = || async {
        let s = TcpStream::connect(to).await.with_context(|| format!("cannot connect to {to}"))?;
        s.set_nodelay(true)?;
        anyhow::Ok(s)
    };
    match hop {
        Hop::Plain => copy(inbound, connect().await?).await,
        Hop::Connect(config) => {
            let out = connect().await?;
            let name = tls::server_name(&to.ip().to_string())?;
            let out = tls::connect(config.clone(), name, out).await.context("TLS handshake with the server relay")?;
            copy(inbound, out).await
        }
        Hop::Accept { config, peer } => {
            let accepted = tls::accept(config.clone(), inbound).await.context("TLS handshake with the client relay")?;
            let got = accepted.peer_id().unwrap_or("none").to_string();
            anyhow::ensure!(got == *peer, "the client relay presented {got}, not {peer}: refused");
            copy(accepted.into_parts().0, connect().await?).await
        }
    }
}

async fn copy(
    mut a: impl AsyncRead + AsyncWrite + Unpin,
    mut b: impl AsyncRead + AsyncWrite + Unpin,
) -> anyhow::Result<()> {
    tokio::io::copy_bidirectional(&mut a, &mut b).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
