//! Synthetic registries of any size, for measuring the control plane at
//! scale (`cargo xtask bench --scenario control-plane`) and for the tests
//! that prove every watcher hears of a change.
//!
//! Service `i` is `svc-i` in namespace `default` on port 80 (HTTP), with
//! endpoints spread evenly (the first services take the remainder), each at
//! its own address in 10.0.0.0/8. [`Synthetic::move_endpoint`] moves one
//! endpoint of a service to a fresh address in 11.0.0.0/8, which is how a
//! change is made and then recognised by whoever watches that service.

use crate::{Endpoint, Port, RegistryFile, Service};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The port every synthetic service listens on.
pub const SERVICE_PORT: u16 = 80;
/// The port of every synthetic endpoint.
pub const ENDPOINT_PORT: u16 = 8080;
/// The most endpoints (or moves) one synthetic registry can address: the
/// addresses are drawn from a /8.
pub const MAX_ADDRESSES: usize = 1 << 24;

/// Why a synthetic registry cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleError {
    /// No services asked for.
    NoServices,
    /// More endpoints than one /8 holds.
    TooManyEndpoints(usize),
    /// A service index beyond the registry.
    NoSuchService(usize),
    /// The service has no endpoint to move.
    NoEndpoint(usize),
}

impl fmt::Display for ScaleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoServices => write!(f, "a synthetic registry needs at least one service"),
            Self::TooManyEndpoints(n) => {
                write!(f, "{n} endpoints do not fit in 10.0.0.0/8: give at most {MAX_ADDRESSES}")
            }
            Self::NoSuchService(i) => write!(f, "service {i} is not in the synthetic registry"),
            Self::NoEndpoint(i) => write!(f, "service {i} has no endpoint to move: give more endpoints than services"),
        }
    }
}

impl std::error::Error for ScaleError {}

/// A synthetic registry and the moves made to it so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Synthetic {
    /// The registry file as it stands.
    pub file: RegistryFile,
    /// Endpoints moved so far (each move takes the next fresh address).
    moves: usize,
}

impl Synthetic {
    /// `services` services sharing `endpoints` endpoints as evenly as possible.
    pub fn new(services: usize, endpoints: usize) -> Result<Self, ScaleError> {
        if services == 0 {
            return Err(ScaleError::NoServices);
        }
        if endpoints > MAX_ADDRESSES {
            return Err(ScaleError::TooManyEndpoints(endpoints));
        }
        let (each, extra) = (endpoints / services, endpoints % services);
        let mut next = 0;
        let services = (0..services)
            .map(|i| {
                let n = each + usize::from(i < extra);
                let eps = (next..next + n).map(|k| Endpoint::address(address(10, k))).collect();
                next += n;
                Service {
                    ports: vec![Port { protocol: Some("http".into()), ..Port::new(SERVICE_PORT) }],
                    endpoints: eps,
                    ..Service::new(name(i))
                }
            })
            .collect();
        Ok(Self { file: RegistryFile { services, ..RegistryFile::default() }, moves: 0 })
    }

    /// Number of services.
    pub fn services(&self) -> usize {
        self.file.services.len()
    }

    /// Number of endpoints across services.
    pub fn endpoints(&self) -> usize {
        self.file.services.iter().map(|s| s.endpoints.len()).sum()
    }

    /// Moves service `i`'s first endpoint to a fresh address (never used
    /// before in this registry) and returns it: one endpoint removed, one
    /// added, as when a replica is rescheduled.
    pub fn move_endpoint(&mut self, i: usize) -> Result<SocketAddr, ScaleError> {
        if self.moves >= MAX_ADDRESSES {
            return Err(ScaleError::TooManyEndpoints(self.moves + 1));
        }
        let service = self.file.services.get_mut(i).ok_or(ScaleError::NoSuchService(i))?;
        let ep = service.endpoints.first_mut().ok_or(ScaleError::NoEndpoint(i))?;
        let fresh = address(11, self.moves);
        self.moves += 1;
        *ep = Endpoint::address(fresh);
        Ok(fresh)
    }
}

/// Service `i`'s name.
pub fn name(i: usize) -> String {
    format!("svc-{i}")
}

/// Service `i`'s Destination target, as a proxy asks for it.
pub fn target(i: usize) -> String {
    format!("{}.default:{SERVICE_PORT}", name(i))
}

/// The `k`-th address of `first`.0.0.0/8 (`k` below [`MAX_ADDRESSES`]).
fn address(first: u8, k: usize) -> SocketAddr {
    let [_, b, c, d] = u32::try_from(k % MAX_ADDRESSES).unwrap_or(0).to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(first, b, c, d)), ENDPOINT_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The sizes asked for are the sizes made, spread evenly, every address
    /// distinct. Catches: a remainder dropped (99 of 100 endpoints) or
    /// given to one service, addresses that wrap and collide.
    #[test]
    fn sizes_are_exact_and_addresses_distinct() {
        let s = Synthetic::new(7, 100).expect("fits");
        assert_eq!((s.services(), s.endpoints()), (7, 100));
        let counts: Vec<usize> = s.file.services.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(counts, [15, 15, 14, 14, 14, 14, 14]);
        let big = Synthetic::new(10_000, 100_000).expect("fits");
        assert_eq!((big.services(), big.endpoints()), (10_000, 100_000));
        let addrs: HashSet<SocketAddr> =
            big.file.services.iter().flat_map(|s| &s.endpoints).filter_map(|e| e.address).collect();
        assert_eq!(addrs.len(), 100_000);
        let names: HashSet<&str> = big.file.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), 10_000);
        assert_eq!(Synthetic::new(3, 0).expect("empty services are fine").endpoints(), 0);
    }

    /// A move replaces one endpoint with an address never seen before, so a
    /// watcher can tell the change arrived. Catches: a move that adds
    /// (sizes grow), reuses an address, or touches another service.
    #[test]
    fn moves_take_fresh_addresses() {
        let mut s = Synthetic::new(3, 6).expect("fits");
        let before = s.clone();
        let a = s.move_endpoint(1).expect("moves");
        let b = s.move_endpoint(1).expect("moves");
        assert_ne!(a, b);
        assert_eq!(s.endpoints(), 6);
        assert_eq!(s.file.services[1].endpoints[0].address, Some(b));
        assert_eq!(s.file.services[0], before.file.services[0]);
        assert_eq!(s.file.services[2], before.file.services[2]);
        let all: Vec<SocketAddr> =
            before.file.services.iter().flat_map(|s| &s.endpoints).filter_map(|e| e.address).collect();
        assert!(!all.contains(&a) && !all.contains(&b));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        assert_eq!(Synthetic::new(0, 10), Err(ScaleError::NoServices));
        assert_eq!(Synthetic::new(1, MAX_ADDRESSES + 1), Err(ScaleError::TooManyEndpoints(MAX_ADDRESSES + 1)));
        let mut s = Synthetic::new(2, 1).expect("fits");
        assert_eq!(s.move_endpoint(1), Err(ScaleError::NoEndpoint(1)));
        assert_eq!(s.move_endpoint(5), Err(ScaleError::NoSuchService(5)));
        assert!(ScaleError::NoEndpoint(1).to_string().contains("more endpoints"));
        assert_eq!(target(3), "svc-3.default:80");
    }
}
