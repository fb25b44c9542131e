//! Opening connections to endpoints (and, with identity, securing them).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Opens TCP connections with a deadline and the socket options a proxy wants.
#[derive(Debug, Clone)]
pub struct Connector {
    timeout: Duration,
}

impl Connector {
    /// Connections give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// Connects to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {:?}", self.timeout)))??;
        // Small requests must not wait for Nagle's algorithm.
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
