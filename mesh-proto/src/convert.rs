//! Conversions between wire types and `std::net` types.

use crate::destination::SocketAddress;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A wire address that does not decode to an IP address and port.
#[derive(Debug, thiserror::Error)]
#[error("invalid socket address on the wire: {0}")]
pub struct InvalidAddress(&'static str);

impl From<SocketAddr> for SocketAddress {
    fn from(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        SocketAddress { ip, port: u32::from(addr.port()) }
    }
}

impl TryFrom<&SocketAddress> for SocketAddr {
    type Error = InvalidAddress;

    fn try_from(a: &SocketAddress) -> Result<Self, Self::Error> {
        let port = u16::try_from(a.port).map_err(|_| InvalidAddress("port above 65535"))?;
        let ip = match a.ip.len() {
            4 => {
                let mut o = [0u8; 4];
                o.copy_from_slice(&a.ip);
                IpAddr::V4(Ipv4Addr::from(o))
            }
            16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a.ip);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => return Err(InvalidAddress("ip is neither 4 nor 16 bytes")),
        };
        Ok(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        for s in ["10.1.2.3:80", "[::1]:4143"] {
            let a: SocketAddr = s.parse().expect("test address");
            let w = SocketAddress::from(a);
            assert_eq!(SocketAddr::try_from(&w).expect("decodes"), a);
        }
    }

    #[test]
    fn rejects_bad_lengths_and_ports() {
        let bad = SocketAddress { ip: vec![1, 2, 3], port: 1 };
        assert!(SocketAddr::try_from(&bad).is_err());
        let bad = SocketAddress { ip: vec![1, 2, 3, 4], port: 70000 };
        assert!(SocketAddr::try_from(&bad).is_err());
    }
}
