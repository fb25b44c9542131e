//! The Workloads API: proxies register and stay registered while their
//! stream is open. The set is served on the admin port at `/proxies`, which
//! is how `meshctl stat`, `top`, `tap` and `edges` find every proxy's admin
//! address.
//!
//! A registration lives exactly as long as its stream: when the proxy exits
//! or its connection dies, the server drops the stream and the entry goes
//! with it. A proxy that reconnects registers again.

use futures_util::Stream;
use mesh_core::shutdown::Shutdown;
use mesh_proto::wire::{ProxyListing, RegisteredProxy};
use mesh_proto::workloads::{RegisterAck, RegisterRequest, workloads_server::Workloads};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// Longest workload name, identity or version accepted.
const MAX_FIELD: usize = 512;

/// The set of registered proxies, shared by the API and the admin server.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, RegisteredProxy>>,
}

impl Proxies {
    /// Every registered proxy, sorted by workload then admin address.
    pub fn list(&self) -> Vec<RegisteredProxy> {
        let mut all: Vec<RegisteredProxy> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| (&a.workload, a.admin_addr).cmp(&(&b.workload, b.admin_addr)));
        all
    }

    /// The `/proxies` document for the admin port.
    pub fn listing(&self) -> ProxyListing {
        ProxyListing { proxies: self.list() }
    }

    /// Adds `entry`; it stays until the returned guard drops.
    pub fn insert(&self, entry: RegisteredProxy) -> Registration {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, entry);
        Registration { proxies: self.clone(), id }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, RegisteredProxy>> {
        self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps one proxy registered while it lives.
#[derive(Debug)]
pub struct Registration {
    proxies: Proxies,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(gone) = self.proxies.lock().remove(&self.id) {
            tracing::info!(workload = %gone.workload, admin = %gone.admin_addr, "proxy unregistered");
        }
    }
}

/// Validates a request into an entry; `remote` replaces unspecified IPs.
pub fn entry(req: &RegisterRequest, remote: Option<SocketAddr>, now: SystemTime) -> Result<RegisteredProxy, String> {
    let workload = req.workload.trim();
    if workload.is_empty() {
        return Err("the workload name is empty".to_string());
    }
    for (what, v) in [("workload", &req.workload), ("identity", &req.identity), ("version", &req.version)] {
        if v.len() > MAX_FIELD {
            return Err(format!("the {what} is longer than {MAX_FIELD} bytes"));
        }
    }
    let addr = |what: &str, s: &str| -> Result<SocketAddr, String> {
        let a: SocketAddr = s.parse().map_err(|_| format!("invalid {what} {s:?}: expected ip:port"))?;
        if a.port() == 0 {
            return Err(format!("invalid {what} {s:?}: port 0"));
        }
        Ok(reachable(a, remote.map(|r| r.ip())))
    };
    let admin_addr = addr("admin address", &req.admin_addr)?;
    let inbound_addr = match req.inbound_addr.trim() {
        "" => None,
        s => Some(addr("inbound address", s)?),
    };
    let identity = Some(req.identity.trim().to_string()).filter(|i| !i.is_empty());
    Ok(RegisteredProxy {
        workload: workload.to_string(),
        identity,
        admin_addr,
        inbound_addr,
        version: req.version.clone(),
        remote_addr: remote,
        since_unix: now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

/// `addr`, with an unspecified IP replaced by the peer's (if known).
fn reachable(addr: SocketAddr, peer: Option<IpAddr>) -> SocketAddr {
    match peer {
        Some(ip) if addr.ip().is_unspecified() => SocketAddr::new(canonical(ip), addr.port()),
        _ => addr,
    }
}

/// An IPv4-mapped IPv6 address as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Where a request came from: plain TCP or the control plane's own TLS.
fn remote_addr<T>(req: &Request<T>) -> Option<SocketAddr> {
    req.remote_addr().or_else(|| req.extensions().get::<crate::tls::ConnInfo>().map(|c| c.remote))
}

/// Serves [`Workloads`] into a [`Proxies`] set.
#[derive(Debug, Clone)]
pub struct WorkloadsService {
    proxies: Proxies,
    shutdown: Shutdown,
}

impl WorkloadsService {
    /// Registers into `proxies`; open streams end on `shutdown`.
    pub fn new(proxies: Proxies, shutdown: Shutdown) -> Self {
        Self { proxies, shutdown }
    }
}

/// The stream type of `Register`.
pub type AckStream = Pin<Box<dyn Stream<Item = Result<RegisterAck, Status>> + Send>>;

#[tonic::async_trait]
impl Workloads for WorkloadsService {
    type RegisterStream = AckStream;

    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Self::RegisterStream>, Status> {
        let remote = remote_addr(&request);
        let req = request.into_inner();
        let e = entry(&req, remote, SystemTime::now()).map_err(Status::invalid_argument)?;
        tracing::info!(workload = %e.workload, admin = %e.admin_addr, identity = ?e.identity, "proxy registered");
        let ack = RegisterAck {
            admin_addr: e.admin_addr.to_string(),
            inbound_addr: e.inbound_addr.map(|a| a.to_string()).unwrap_or_default(),
        };
        let guard = self.proxies.insert(e);
        let shutdown = self.shutdown.clone();
        // The ack, then nothing until shutdown; the guard lives in the
        // stream, so the entry goes when the server drops it.
        let stream =
            futures_util::stream::unfold((Some(ack), guard, shutdown), |(ack, guard, mut shutdown)| async move {
                match ack {
                    Some(a) => Some((Ok(a), (None, guard, shutdown))),
                    None => {
                        shutdown.triggered().await;
                        drop(guard);
                        None
                    }
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(admin: &str, inbound: &str) -> RegisterRequest {
        RegisterRequest {
            workload: "books-0".into(),
            identity: "spiffe://demo.mesh/ns/default/sa/books".into(),
            admin_addr: admin.into(),
            inbound_addr: inbound.into(),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn unspecified_addresses_take_the_peer_ip() {
        let peer: SocketAddr = "10.1.2.3:50000".parse().expect("addr");
        let e = entry(&req("0.0.0.0:4191", "0.0.0.0:4143"), Some(peer), UNIX_EPOCH).expect("valid");
        assert_eq!(e.admin_addr, "10.1.2.3:4191".parse().expect("addr"));
        assert_eq!(e.inbound_addr, Some("10.1.2.3:4143".parse().expect("addr")));
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:1".parse().expect("addr");
        let e = entry(&req("[::]:4191", ""), Some(mapped), UNIX_EPOCH).expect("valid");
        assert_eq!(e.admin_addr, "10.1.2.3:4191".parse().expect("addr"));
        assert_eq!(e.inbound_addr, None);
        let e = entry(&req("127.0.0.1:4191", ""), Some(peer), UNIX_EPOCH).expect("valid");
        assert_eq!(e.admin_addr, "127.0.0.1:4191".parse().expect("addr"), "a specific address is kept");
        let e = entry(&req("0.0.0.0:4191", ""), None, UNIX_EPOCH).expect("valid");
        assert!(e.admin_addr.ip().is_unspecified(), "without a peer address there is nothing better");
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut r = req("127.0.0.1:4191", "");
        r.workload = " ".into();
        assert!(entry(&r, None, UNIX_EPOCH).is_err());
        assert!(entry(&req("nope", ""), None, UNIX_EPOCH).is_err());
        assert!(entry(&req("127.0.0.1:0", ""), None, UNIX_EPOCH).is_err());
        assert!(entry(&req("127.0.0.1:1", "x"), None, UNIX_EPOCH).is_err());
        let mut r = req("127.0.0.1:4191", "");
        r.identity = "x".repeat(MAX_FIELD + 1);
        assert!(entry(&r, None, UNIX_EPOCH).is_err());
    }

    #[test]
    fn registrations_last_as_long_as_their_guard() {
        let proxies = Proxies::default();
        let b = proxies.insert(entry(&req("127.0.0.1:2", ""), None, UNIX_EPOCH).expect("valid"));
        let mut a = entry(&req("127.0.0.1:1", ""), None, UNIX_EPOCH).expect("valid");
        a.workload = "authors-0".into();
        let a = proxies.insert(a);
        let names: Vec<String> = proxies.list().into_iter().map(|p| p.workload).collect();
        assert_eq!(names, ["authors-0", "books-0"]);
        drop(b);
        assert_eq!(proxies.list().len(), 1);
        assert_eq!(proxies.listing().proxies[0].workload, "authors-0");
        drop(a);
        assert!(proxies.list().is_empty());
    }
}
