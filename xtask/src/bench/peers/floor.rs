//! The floor references: a pair of minimal relays (`mesh-test-app relay`:
//! one thread each, bytes copied per connection, no HTTP parsing), load →
//! client relay → server relay → app, plaintext or with TLS 1.3 between the
//! relays (the mesh's TLS setup and provider; certificates from the bench's
//! CA, as Envoy's pair's, SPIFFE IDs checked).
//!
//! What such a pair costs per request is what any two-process relay pays on
//! this machine (the kernel's sockets and wake-ups, one copy, and with TLS
//! the records' crypto); what our pair costs above the TLS floor is the
//! part a proxy that parses HTTP can cut.

use super::super::loadgen::Proto;
use super::super::topology::{CLIENT_ACCOUNT, SERVER_ACCOUNT, ok_at};
use super::Running;
use super::envoy::{Certs, spiffe_id};
use crate::mesh::{ADMIN_TIMEOUT, STARTUP, loopback};
use crate::procs::{free_ports, http_get, spawn, wait_for};
use anyhow::bail;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

/// Which side of the pair a relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// One relay's arguments: listen on `listen`, relay to `to`; with `certs`,
/// TLS towards the other relay (`connect` on the client side, `accept` on
/// the server side) with that side's leaf, requiring the other's SPIFFE ID.
fn args(side: Side, listen: SocketAddr, to: SocketAddr, certs: Option<&Certs>) -> Vec<String> {
    let mut a = vec!["relay".into(), "--listen".into(), listen.to_string(), "--to".into(), to.to_string()];
    if let Some(c) = certs {
        let (tls, mine, peer) = match side {
            Side::Client => ("connect", &c.client, SERVER_ACCOUNT),
            Side::Server => ("accept", &c.server, CLIENT_ACCOUNT),
        };
        let path = |p: &Path| p.display().to_string();
        a.extend([
            "--tls".into(),
            tls.into(),
            "--cert-chain".into(),
            path(&mine.chain),
            "--key".into(),
            path(&mine.key),
            "--trust-anchors".into(),
            path(&c.anchors),
            "--peer-id".into(),
            spiffe_id(peer),
        ]);
    }
    a
}

/// `None` once a TCP connection to `addr` opens.
fn accepting(addr: SocketAddr) -> Option<String> {
    TcpStream::connect_timeout(&addr, ADMIN_TIMEOUT).err().map(|e| format!("{addr}: {e}"))
}

/// Starts the relay pair in front of `app` (TLS between the relays with
/// `certs`), waits until both accept, and for HTTP/1.1 proves the path: a
/// request through the pair gets the app's answer, and (TLS) the server
/// relay does not relay a plaintext request.
pub fn start(
    test_app: &Path,
    certs: Option<&Certs>,
    proto: Proto,
    app: SocketAddr,
    dir: &Path,
) -> anyhow::Result<Running> {
    let p = free_ports(2)?;
    let (entry, inbound) = (loopback(p[0]), loopback(p[1]));
    let kind = if certs.is_some() { "tls" } else { "tcp" };
    let name = |side: &str| format!("floor-{kind}-{side}-{}", proto.key());
    let server = spawn(&name("server"), test_app, &args(Side::Server, inbound, app, certs), &[], dir)?;
    let client = spawn(&name("client"), test_app, &args(Side::Client, entry, inbound, certs), &[], dir)?;
    let all = [&server, &client];
    wait_for("the server relay to listen", STARTUP, &all, || accepting(inbound))?;
    wait_for("the client relay to listen", STARTUP, &all, || accepting(entry))?;
    if proto == Proto::Http1 {
        wait_for("a request through the relay pair", STARTUP, &all, || ok_at(entry))?;
        if certs.is_some()
            && let Ok((status, body)) = http_get(inbound, "/", ADMIN_TIMEOUT)
        {
            bail!("the TLS server relay relayed a plaintext request ({status} {body:?}): not the pair it claims to be");
        }
    }
    Ok(Running::new(vec![client, server], entry))
}

#[cfg(test)]
mod tests {
    use super::super::envoy::Leaf;
    use super::*;
    use std::path::PathBuf;

    /// Catches a TLS pair started without TLS on one side, with the same
    /// side twice, with a relay presenting the other's certificate, or
    /// expecting its own identity from its peer.
    #[test]
    fn each_relay_gets_its_side_and_the_others_identity() {
        let leaf =
            |n: &str| Leaf { chain: PathBuf::from(format!("/c/{n}.pem")), key: PathBuf::from(format!("/c/{n}.key")) };
        let certs = Certs { client: leaf("client"), server: leaf("server"), anchors: PathBuf::from("/c/anchors.pem") };
        let (a, b) = (loopback(1), loopback(2));
        let plain = args(Side::Client, a, b, None);
        assert_eq!(plain, ["relay", "--listen", "127.0.0.1:1", "--to", "127.0.0.1:2"]);
        let client = args(Side::Client, a, b, Some(&certs)).join(" ");
        let server = args(Side::Server, a, b, Some(&certs)).join(" ");
        assert!(client.contains("--tls connect --cert-chain /c/client.pem --key /c/client.key"), "{client}");
        assert!(client.ends_with(&format!("--peer-id {}", spiffe_id(SERVER_ACCOUNT))), "{client}");
        assert!(server.contains("--tls accept --cert-chain /c/server.pem --key /c/server.key"), "{server}");
        assert!(server.ends_with(&format!("--peer-id {}", spiffe_id(CLIENT_ACCOUNT))), "{server}");
        assert!(server.contains("--trust-anchors /c/anchors.pem"), "{server}");
    }
}
