//! Connections counted per listener from accept to close.
//!
//! Protocol-level gauges start once a connection is understood (after
//! detection, after a TLS handshake). A connection stuck before that — a
//! silent client, a handshake that never finishes — would be invisible to
//! them; these count every accepted socket until it is closed, so such a
//! leak shows as `listener_open_connections{listener="..."}` that never
//! falls back.

use crate::gauge::Held;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The label of a listener's metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Which listener: `inbound`, `outbound`, `upstream:<target>`, `admin`, `grpc`, `webhook`.
    pub listener: String,
}

/// Accepted and open connections of every listener of a process.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    open: Family<ListenerLabels, Gauge>,
    accepted: Family<ListenerLabels, Counter>,
}

impl ListenerMetrics {
    /// Registers `listener_open_connections` and `listener_accepted_connections_total`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "listener_open_connections",
            "Connections accepted and not yet closed, by listener (counted from accept, before detection or TLS)",
            self.open.clone(),
        );
        reg.register("listener_accepted_connections", "Connections accepted, by listener", self.accepted.clone());
    }

    /// The handles of one listener (resolved once, used per accept).
    pub fn listener(&self, name: &str) -> Accepts {
        let labels = ListenerLabels { listener: name.to_string() };
        Accepts {
            open: self.open.get_or_create(&labels).clone(),
            accepted: self.accepted.get_or_create(&labels).clone(),
        }
    }
}

/// One listener's counters.
#[derive(Debug, Clone)]
pub struct Accepts {
    open: Gauge,
    accepted: Counter,
}

impl Accepts {
    /// Counts one accepted connection, open until the returned value drops
    /// (keep it with the socket: [`Counted`]).
    pub fn accepted(&self) -> Held {
        self.accepted.inc();
        Held::new(self.open.clone())
    }

    /// Connections of this listener open now.
    pub fn open(&self) -> i64 {
        self.open.get()
    }
}

/// A listener whose accepted sockets come counted.
#[derive(Debug)]
pub struct CountedListener {
    listener: tokio::net::TcpListener,
    accepts: Accepts,
}

impl CountedListener {
    /// `listener`, its connections counted by `accepts`.
    pub fn new(listener: tokio::net::TcpListener, accepts: Accepts) -> Self {
        Self { listener, accepts }
    }

    /// Accepts one connection, counted until the returned socket drops.
    pub async fn accept(&self) -> io::Result<(Counted<tokio::net::TcpStream>, std::net::SocketAddr)> {
        let (tcp, remote) = self.listener.accept().await?;
        Ok((Counted::new(tcp, self.accepts.accepted()), remote))
    }
}

/// A socket counted as open for exactly as long as it exists: wherever the
/// stream goes (a handshake task, an upgraded connection), the count goes
/// with it and falls when the socket is dropped (closed).
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    _open: Held,
}

impl<T> Counted<T> {
    /// `inner`, counted by `open` (from [`Accepts::accepted`]).
    pub fn new(inner: T, open: Held) -> Self {
        Self { inner, _open: open }
    }

    /// The socket.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_accept_until_the_socket_drops() {
        let m = ListenerMetrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let inbound = m.listener("inbound");
        let a = Counted::new((), inbound.accepted());
        let b = inbound.accepted();
        assert_eq!(inbound.open(), 2);
        drop(a);
        assert_eq!(inbound.open(), 1);
        drop(b);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        assert!(out.contains(r#"listener_open_connections{listener="inbound"} 0"#), "{out}");
        assert!(out.contains(r#"listener_accepted_connections_total{listener="inbound"} 2"#), "{out}");
    }
}
