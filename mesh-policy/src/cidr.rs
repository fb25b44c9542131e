//! IP networks in authorization rules: one parser (strict: no host bits,
//! so `10.0.0.1/8` is an error that suggests `10.0.0.0/8`) and one
//! membership test, used by the control plane's validation and the proxy's
//! evaluation alike.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network: an address with no host bits set, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in the network. An IPv4-mapped IPv6 address
    /// (`::ffff:10.1.2.3`, how a dual-stack socket reports an IPv4 peer) is
    /// compared as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why a string is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCidr(String);

impl FromStr for Cidr {
    type Err = InvalidCidr;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix_len) = parts(s)?;
        // Clients are compared as IPv4 when they are IPv4-mapped (see
        // `contains`), so a network inside ::ffff:0:0/96 would match no one.
        if let IpAddr::V6(v6) = addr
            && prefix_len >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            let suggestion = if s.contains('/') { format!("{v4}/{}", prefix_len - 96) } else { v4.to_string() };
            return Err(InvalidCidr(format!(
                "{s:?} is an IPv4-mapped IPv6 network, which matches no client (IPv4 clients are compared as \
                 IPv4 addresses): write {suggestion}"
            )));
        }
        let network = mask_addr(addr, prefix_len);
        if network != addr {
            let network = Cidr { addr: network, prefix_len };
            return Err(InvalidCidr(format!(
                "host bits are set after the /{prefix_len} prefix: did you mean {network}?"
            )));
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl Cidr {
    /// The network `s` lies in: parsed like [`FromStr`], but host bits are
    /// cleared rather than refused (`10.1.2.3/8` is `10.0.0.0/8`), the way
    /// iptables stores a network, so what we compare is what it saved.
    pub fn masked(s: &str) -> Result<Self, InvalidCidr> {
        let (addr, prefix_len) = parts(s)?;
        Ok(Cidr { addr: mask_addr(addr, prefix_len), prefix_len })
    }
}

/// The address and prefix length of `s` (a bare address is a /32 or /128).
fn parts(s: &str) -> Result<(IpAddr, u8), InvalidCidr> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let addr: IpAddr = ip.parse().map_err(|_| InvalidCidr(format!("{ip:?} is not an IP address")))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match len {
        None => max,
        Some(len) => match len.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(InvalidCidr(format!("prefix length {len:?} is not a number from 0 to {max}"))),
        },
    };
    Ok((addr, prefix_len))
}

fn mask_addr(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.1.2.3".parse().expect("ip")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        assert_eq!("10.0.0.1".parse::<Cidr>().expect("host").to_string(), "10.0.0.1/32");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().expect("all").to_string(), "0.0.0.0/0");
        assert_eq!("fd00::/8".parse::<Cidr>().expect("v6").to_string(), "fd00::/8");
        assert!("::/0".parse::<Cidr>().expect("all v6").contains("::1".parse().expect("ip")));
        let host_bits = "10.0.0.1/8".parse::<Cidr>().expect_err("host bits");
        assert!(host_bits.to_string().contains("did you mean 10.0.0.0/8"), "{host_bits}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0/".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
        assert!("fd00::1/129".parse::<Cidr>().is_err());
    }

    /// Catches a `masked` that keeps host bits (`10.1.2.3/8` would never
    /// equal what iptables saved, `10.0.0.0/8`) or refuses them like parsing.
    #[test]
    fn masked_clears_host_bits_as_iptables_does() {
        for (given, network) in [
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.168.7.9/0", "0.0.0.0/0"),
            ("169.254.169.254", "169.254.169.254/32"),
            ("fd00::1/8", "fd00::/8"),
            ("FD12:3456::7/32", "fd12:3456::/32"),
            ("2001:db8::1", "2001:db8::1/128"),
        ] {
            assert_eq!(Cidr::masked(given).expect(given).to_string(), network, "{given}");
        }
        for bad in ["10.0.0.0/33", "fd00::/129", "nope/8", "10.0.0.0/x", ""] {
            assert!(Cidr::masked(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_networks() {
        let c: Cidr = "10.1.0.0/16".parse().expect("cidr");
        assert!(c.contains("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!c.contains("::ffff:10.2.0.1".parse().expect("ip")));
        let v6: Cidr = "::/0".parse().expect("cidr");
        assert!(!v6.contains("10.1.2.3".parse().expect("ip")), "families do not mix");
    }

    /// Found by the `policy` fuzz target: `::ffff:10.0.0.0/104` was accepted
    /// and then never contained any address, its own included (clients in it
    /// are compared as IPv4), so an authorization rule naming it silently
    /// allowed no one. Catches a parser that accepts IPv4-mapped networks again.
    #[test]
    fn ipv4_mapped_networks_are_refused_with_the_ipv4_network_to_write() {
        for (text, suggestion) in [
            ("::ffff:10.0.0.0/104", "write 10.0.0.0/8"),
            ("::ffff:0:0/96", "write 0.0.0.0/0"),
            ("::ffff:10.1.2.3", "write 10.1.2.3"),
        ] {
            let err = text.parse::<Cidr>().expect_err(text).to_string();
            assert!(err.contains("IPv4-mapped") && err.contains(suggestion), "{text}: {err}");
        }
        // Wider IPv6 networks that merely include the mapped range stay IPv6 networks.
        let c: Cidr = "::/64".parse().expect("cidr");
        assert!(c.contains(c.addr()));
        // Every network the parser accepts contains its own address.
        for text in ["10.0.0.0/8", "10.1.2.3", "fd00::/8", "::/0", "::1", "0.0.0.0/0"] {
            let c: Cidr = text.parse().expect(text);
            assert!(c.contains(c.addr()), "{text}");
        }
    }
}
