//! Connections to one endpoint: a pool of HTTP/1.1 connections, and one
//! shared, multiplexed HTTP/2 connection.
//!
//! Getting a connection ([`EndpointClient::connection`]) is separate from
//! sending on it ([`Conn::send`]), so a request whose connection could not be
//! opened is untouched and can go to another endpoint.
//!
//! A connection stops taking new requests (requests in flight finish on it)
//! when any of these happens:
//! - the peer sent GOAWAY (HTTP/2: noticed as the frame is read, see
//!   [`goaway::GoAwayWatch`], and a replacement is opened at once if the
//!   connection was in use), or a request on it came back unprocessed;
//! - it reached its maximum age: [`ClientSettings::max_connection_age`], and
//!   for mTLS no later than the peer's certificate expires;
//! - for mTLS, this proxy's credentials changed since it was opened (a new
//!   trust bundle, or our own renewed certificate): new requests then go on
//!   connections that did a full handshake against what is in force now.
//!
//! A file per concern: this one checks connections out of the pool, back
//! in, and opens them; `state.rs` decides whether one may take new
//! requests; `send.rs` sends a request on one and says whether it may be
//! resent; `goaway.rs` notices an HTTP/2 peer's GOAWAY as it is read.

mod goaway;
mod send;
mod state;

pub use send::{Conn, SendError, head_of};

use crate::body::Body;
use crate::connect::Connector;
use crate::tls::{ClientIo, MeshProtocol};
use goaway::GoAwayWatch;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use send::ConnKind;
use state::ConnState;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which HTTP version to speak to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1, pooled connections.
    Http1,
    /// HTTP/2, one multiplexed connection.
    Http2,
}

/// Client-side connection settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Idle HTTP/1 connections older than this are closed instead of reused.
    pub idle_timeout: Duration,
    /// Idle HTTP/1 connections kept per endpoint.
    pub max_idle: usize,
    /// HTTP/2 PING interval to detect dead peers.
    pub h2_keepalive: Duration,
    /// Largest header block accepted from the endpoint.
    pub max_header_bytes: usize,
    /// No new requests go on a connection older than this: it is
    /// re-established (HTTP/2: a new connection is opened while the old
    /// one's streams finish; HTTP/1: it is not reused).
    pub max_connection_age: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            max_idle: 64,
            h2_keepalive: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connection_age: Duration::from_secs(3600),
        }
    }
}

/// Why a connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {source}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The endpoint has as many connections as policy allows.
    #[error("connection limit ({max}) to {addr} reached")]
    Limit {
        /// The endpoint.
        addr: SocketAddr,
        /// The limit.
        max: u32,
    },
    /// The HTTP handshake failed.
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// The hyper error.
        source: hyper::Error,
    },
}

/// Connections to one endpoint.
#[derive(Debug)]
pub struct EndpointClient {
    addr: SocketAddr,
    identity: Option<String>,
    connector: Connector,
    settings: Arc<ClientSettings>,
    idle: Mutex<Vec<IdleConn>>,
    h2: tokio::sync::Mutex<Option<H2Conn>>,
    /// HTTP/1 connections open now.
    open: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct IdleConn {
    tx: http1::SendRequest<Body>,
    state: Arc<ConnState>,
    since: Instant,
}

#[derive(Debug)]
struct H2Conn {
    tx: http2::SendRequest<Body>,
    state: Arc<ConnState>,
}

impl EndpointClient {
    /// A client for `addr`, whose proxy presents `identity` (mTLS) or none
    /// (plaintext); connections open lazily.
    pub fn new(
        addr: SocketAddr,
        identity: Option<String>,
        connector: Connector,
        settings: Arc<ClientSettings>,
    ) -> Arc<Self> {
        Arc::new(Self {
            addr,
            identity,
            connector,
            settings,
            idle: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
            open: Arc::default(),
        })
    }

    /// A connection for one request of `version`; at most `max_connections`
    /// HTTP/1 connections are opened (0: unlimited).
    pub async fn connection(self: &Arc<Self>, version: Version, max_connections: u32) -> Result<Conn, ConnectError> {
        match version {
            Version::Http1 => {
                if let Some((tx, state)) = self.checkout() {
                    return Ok(Conn(ConnKind::Http1 { tx, state, pool: Some(Arc::downgrade(self)), reused: true }));
                }
                if max_connections > 0 && self.open.load(Ordering::Relaxed) >= max_connections as usize {
                    return Err(ConnectError::Limit { addr: self.addr, max: max_connections });
                }
                let (tx, state) = self.connect_h1().await?;
                Ok(Conn(ConnKind::Http1 { tx, state, pool: Some(Arc::downgrade(self)), reused: false }))
            }
            Version::Http2 => {
                let c = self.shared_h2().await?;
                c.state.used();
                Ok(Conn(ConnKind::Http2 { tx: c.tx.clone(), state: c.state.clone() }))
            }
        }
    }

    /// The shared HTTP/2 connection, replaced first if it may no longer take
    /// requests. The old one is dropped from the pool only: its streams in
    /// flight finish, then hyper and h2 close it.
    async fn shared_h2(self: &Arc<Self>) -> Result<tokio::sync::MappedMutexGuard<'_, H2Conn>, ConnectError> {
        let mut slot = self.h2.lock().await;
        let generation = self.connector.generation();
        if !slot.as_ref().is_some_and(|c| !c.tx.is_closed() && c.state.reusable(generation)) {
            *slot = Some(self.connect_h2().await?);
        }
        tokio::sync::MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| ConnectError::Io { addr: self.addr, source: std::io::Error::other("no HTTP/2 connection") })
    }

    /// A fresh HTTP/1 connection that will not be pooled (for upgrades).
    pub async fn dedicated_h1(&self) -> Result<Conn, ConnectError> {
        let (tx, state) = self.connect_h1().await?;
        Ok(Conn(ConnKind::Http1 { tx, state, pool: None, reused: false }))
    }

    /// Idle HTTP/1 connections currently pooled.
    pub fn idle_count(&self) -> usize {
        self.lock_idle().len()
    }

    /// Closes the idle HTTP/1 connections: one of them was found dead
    /// without the pool hearing (a close lost on its way), and the others
    /// idled as long.
    pub fn drop_idle(&self) {
        self.lock_idle().clear();
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self) -> Option<(http1::SendRequest<Body>, Arc<ConnState>)> {
        let generation = self.connector.generation();
        let mut idle = self.lock_idle();
        let max_age = self.settings.idle_timeout;
        // Most recently used first: it is the most likely to still be open.
        // A connection whose last response just ended may not be ready yet;
        // it stays pooled for the next request.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if c.tx.is_closed() || c.since.elapsed() >= max_age || !c.state.reusable(generation) {
                idle.swap_remove(i);
            } else if c.tx.is_ready() {
                let c = idle.swap_remove(i);
                return Some((c.tx, c.state));
            }
        }
        None
    }

    /// Returns an HTTP/1 connection whose response was read to the end.
    fn checkin(&self, tx: http1::SendRequest<Body>, state: Arc<ConnState>) {
        // Past its age or credentials: not reused, so it closes now.
        if tx.is_closed() || !state.reusable(self.connector.generation()) {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < self.settings.max_idle {
            idle.push(IdleConn { tx, state, since: Instant::now() });
        }
    }

    async fn connect_h1(&self) -> Result<(http1::SendRequest<Body>, Arc<ConnState>), ConnectError> {
        let (io, state) = self.connect_io(MeshProtocol::Http1).await?;
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(self.settings.max_header_bytes.max(8192))
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake { addr: self.addr, source })?;
        let addr = self.addr;
        let open = self.open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "HTTP/1 client connection ended");
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
        Ok((tx, state))
    }

    async fn connect_h2(self: &Arc<Self>) -> Result<H2Conn, ConnectError> {
        let (io, state) = self.connect_io(MeshProtocol::Http2).await?;
        let io = TokioIo::new(GoAwayWatch::new(io.into_inner(), state.clone(), self.replace_on_goaway(&state)));
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.settings.h2_keepalive)
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(false)
            // Fixed windows (hyper's client defaults), not adaptive ones: see
            // `http::server::serve` for why.
            .initial_stream_window_size(2 << 20)
            .initial_connection_window_size(5 << 20)
            .max_header_list_size(u32::try_from(self.settings.max_header_bytes).unwrap_or(u32::MAX))
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake { addr: self.addr, source })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 client connection ended");
            }
        });
        Ok(H2Conn { tx, state })
    }

    /// What to do when the peer sends GOAWAY on an HTTP/2 connection: open
    /// its replacement at once, so requests arriving meanwhile do not wait
    /// for it, unless the connection was idle (a peer closing idle
    /// connections must not make us reopen them forever).
    fn replace_on_goaway(self: &Arc<Self>, state: &Arc<ConnState>) -> Box<dyn FnOnce() + Send + Sync> {
        let (pool, state) = (Arc::downgrade(self), Arc::downgrade(state));
        Box::new(move || {
            let busy = state.upgrade().is_some_and(|s| s.recently_used(Duration::from_secs(5)));
            if let (true, Some(pool)) = (busy, pool.upgrade()) {
                tokio::spawn(async move {
                    if let Err(e) = pool.shared_h2().await {
                        tracing::debug!(addr = %pool.addr, error = %e, "replacing an HTTP/2 connection after GOAWAY");
                    }
                });
            }
        })
    }

    /// A raw connection to the endpoint, for opaque TCP.
    pub async fn connect_raw(&self) -> Result<ClientIo, ConnectError> {
        self.connector
            .connect(self.addr, self.identity.as_deref(), MeshProtocol::Opaque)
            .await
            .map_err(|source| ConnectError::Io { addr: self.addr, source })
    }

    async fn connect_io(&self, protocol: MeshProtocol) -> Result<(TokioIo<ClientIo>, Arc<ConnState>), ConnectError> {
        // Read before the handshake: a change during it retires the connection.
        let generation = self.connector.generation().filter(|_| self.connector.secures(self.identity.as_deref()));
        let io = self
            .connector
            .connect(self.addr, self.identity.as_deref(), protocol)
            .await
            .map_err(|source| ConnectError::Io { addr: self.addr, source })?;
        let state = ConnState::new(&self.settings, &io, generation);
        Ok((TokioIo::new(io), state))
    }
}
