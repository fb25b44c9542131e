//! The original destination of a connection redirected by iptables
//! (`SO_ORIGINAL_DST`), IPv4 and IPv6.

use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Where the client meant to connect, when iptables redirected it here;
/// `None` when the connection was not redirected (it came to us directly).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let dst = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    }
    .ok()?
    .as_socket()?;
    // No NAT happened: the "original" destination is this listener itself.
    (dst != local).then_some(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn direct_connections_have_no_original_destination() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (_c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (s, _) = s.expect("accept");
        assert_eq!(original_dst(&s), None);
    }
}
