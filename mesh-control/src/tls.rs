//! Connections of the control plane's gRPC API: accepted (and counted in
//! `listener_open_connections{listener="grpc"}` until closed), their TLS
//! handshakes run concurrently with a deadline, and finished streams are
//! handed to the gRPC server.

use mesh_core::listener::{Accepts, Counted};
use mesh_core::shutdown::Shutdown;
use mesh_identity::tls::{Credentials, ServerStream};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// A TLS connection from a proxy.
pub type TlsConn = Conn<ServerStream<Counted<TcpStream>>>;

/// A connection from a proxy (TLS, or plaintext without identity) and who
/// is on the other end.
#[derive(Debug)]
pub struct Conn<S> {
    inner: S,
    info: ConnInfo,
    /// Bytes of the HTTP/2 preface (read and checked here) still to hand
    /// to the gRPC server.
    replay: usize,
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<S: AsyncRead + Unpin> Conn<S> {
    /// Reads and checks the client's HTTP/2 preface: the gRPC server waits
    /// for it with no deadline of its own, so a client that connects (and
    /// completes TLS) and then says nothing would otherwise stay forever.
    async fn open(mut inner: S, info: ConnInfo) -> io::Result<Self> {
        let mut preface = [0u8; 24];
        let mut filled = 0;
        while filled < preface.len() {
            let n = inner.read(&mut preface[filled..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            filled += n;
            // Refused at the first wrong byte, not after a deadline.
            if preface[..filled] != PREFACE[..filled] {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "not an HTTP/2 client (no preface)"));
            }
        }
        Ok(Self { inner, info, replay: PREFACE.len() })
    }
}

/// Who is on the other end.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// The peer's SPIFFE ID, when it presented a certificate (verified
    /// against the trust bundle at the handshake).
    pub identity: Option<String>,
    /// When that certificate expires. A connection outlives the handshake
    /// (and a resumed session reuses an earlier one's certificate), so what
    /// the certificate authorizes is checked against this at each use.
    pub not_after: Option<std::time::SystemTime>,
}

impl<S> Connected for Conn<S> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.replay > 0 {
            let from = PREFACE.len() - self.replay;
            let n = self.replay.min(buf.remaining());
            buf.put_slice(&PREFACE[from..from + n]);
            self.replay -= n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
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

/// Accepts TLS connections on `listener` until shutdown; a client that has
/// not finished its handshake and sent the HTTP/2 preface within
/// `handshake_timeout` is dropped (closing the socket).
pub fn incoming(
    listener: TcpListener,
    creds: Arc<Credentials>,
    accepts: Accepts,
    handshake_timeout: Duration,
    shutdown: Shutdown,
) -> Result<ReceiverStream<Result<TlsConn, io::Error>>, mesh_identity::tls::TlsError> {
    let config = creds.server_config(false, &[b"h2"])?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, accepts, shutdown, move |tcp, remote| {
        let (config, tx) = (config.clone(), tx.clone());
        tokio::spawn(async move {
            let open = async {
                let (tls, identity) = mesh_identity::tls::accept(config, tcp).await?.into_parts();
                let not_after = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|leaf| mesh_identity::pem::CertInfo::parse(leaf).ok())
                    .map(|i| i.not_after);
                Conn::open(tls, ConnInfo { remote, identity, not_after }).await
            };
            match tokio::time::timeout(handshake_timeout, open).await {
                Ok(Ok(conn)) => {
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, "TLS handshake (or HTTP/2 preface) timed out"),
            }
        });
    }));
    Ok(ReceiverStream::new(rx))
}

/// Accepts plaintext connections on `listener` until shutdown (a control
/// plane without identity); a client that has not sent the HTTP/2 preface
/// within `preface_timeout` is dropped.
pub fn plain_incoming(
    listener: TcpListener,
    accepts: Accepts,
    preface_timeout: Duration,
    shutdown: Shutdown,
) -> ReceiverStream<Result<Conn<Counted<TcpStream>>, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, accepts, shutdown, move |tcp, remote| {
        let info = ConnInfo { remote, identity: None, not_after: None };
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(preface_timeout, Conn::open(tcp, info)).await {
                Ok(Ok(conn)) => {
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "gRPC client refused"),
                Err(_) => tracing::debug!(%remote, "no HTTP/2 preface in time"),
            }
        });
    }));
    ReceiverStream::new(rx)
}

/// Accepts until shutdown; each socket is counted from here until closed.
async fn accept_loop(
    listener: TcpListener,
    accepts: Accepts,
    mut shutdown: Shutdown,
    on_accept: impl Fn(Counted<TcpStream>, SocketAddr),
) {
    loop {
        let (tcp, remote) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.triggered() => return,
        };
        let _ = tcp.set_nodelay(true);
        on_accept(Counted::new(tcp, accepts.accepted()), remote);
    }
}
