//! The original destination of a connection redirected by iptables:
//! `SO_ORIGINAL_DST` (`SOL_IP`) for IPv4, `IP6T_SO_ORIGINAL_DST` (80 on
//! `SOL_IPV6`) for IPv6. A dual-stack listener (`[::]:4143`) sees IPv4
//! peers as IPv4-mapped addresses; their connections are IPv4 to conntrack,
//! so they are asked with the IPv4 option.

use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpStream;

/// Which getsockopt answers for a connection accepted on `local`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// `local` as the kernel's connection tracking sees it: an IPv4-mapped
/// IPv6 address is the IPv4 address it carries.
fn unmapped(local: SocketAddr) -> (Family, SocketAddr) {
    match local.ip() {
        IpAddr::V4(_) => (Family::V4, local),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (Family::V4, SocketAddr::new(IpAddr::V4(v4), local.port())),
            None => (Family::V6, local),
        },
    }
}

/// Where the client meant to connect, when iptables redirected it here;
/// `None` when the connection was not redirected (it came to us directly).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let (family, local) = unmapped(stream.local_addr().ok()?);
    let dst = match family {
        Family::V4 => sock.original_dst_v4(),
        Family::V6 => sock.original_dst_v6(),
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
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = tokio::net::TcpListener::bind(bind).await else { continue };
            let addr = l.local_addr().expect("addr");
            let (_c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
            let (s, _) = s.expect("accept");
            assert_eq!(original_dst(&s), None, "{bind}");
        }
    }

    /// Catches asking `SOL_IPV6` for an IPv4 peer of a dual-stack listener
    /// (conntrack has no IPv6 entry for it: every such connection would be
    /// "not redirected") or comparing the mapped address with an IPv4 one.
    #[test]
    fn ipv4_mapped_locals_are_asked_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.77.0.10]:4143".parse().expect("addr");
        assert_eq!(unmapped(mapped), (Family::V4, "10.77.0.10:4143".parse().expect("addr")));
        let v6: SocketAddr = "[fd00:77::10]:4143".parse().expect("addr");
        assert_eq!(unmapped(v6), (Family::V6, v6));
        let v4: SocketAddr = "127.0.0.1:4140".parse().expect("addr");
        assert_eq!(unmapped(v4), (Family::V4, v4));
    }
}
