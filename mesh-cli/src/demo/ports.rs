//! Free loopback ports for the demo's processes.
//!
//! A port is found by binding port 0 and reading what the OS chose, then
//! released so the child can bind it. Another process may take it in
//! between; start-up notices ("Address already in use") and tries again on
//! new ports.

use anyhow::{Context as _, bail};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

/// Hands out free loopback ports, never the same one twice.
#[derive(Debug, Default)]
pub struct Ports {
    given: HashSet<u16>,
}

impl Ports {
    /// `n` distinct free ports on 127.0.0.1: bound all at once (port 0),
    /// read, and released for the child that will bind them.
    pub fn take(&mut self, n: usize) -> anyhow::Result<Vec<SocketAddr>> {
        // Everything stays bound until the end, so the OS hands out distinct
        // ports; a port given out before is skipped (and kept bound meanwhile).
        let mut held = Vec::with_capacity(n);
        let mut fresh = Vec::with_capacity(n);
        let mut failures = 0;
        while fresh.len() < n {
            match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| Ok((l.local_addr()?, l))) {
                Ok((addr, listener)) => {
                    if self.given.insert(addr.port()) {
                        fresh.push(addr);
                    }
                    held.push(listener);
                    if held.len() > n + 100 {
                        bail!("cannot find {n} fresh loopback ports");
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures > 10 {
                        return Err(e).context("cannot find a free loopback port");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_the_same_port_twice() {
        let mut ports = Ports::default();
        let mut all = ports.take(10).expect("ports");
        all.extend(ports.take(10).expect("more ports"));
        assert_eq!(all.len(), 20);
        assert!(all.iter().all(|a| a.ip() == Ipv4Addr::LOCALHOST && a.port() != 0));
        let distinct: HashSet<u16> = all.iter().map(SocketAddr::port).collect();
        assert_eq!(distinct.len(), 20);
    }
}
