//! A swarm of simulated proxies watching the control plane: each client has
//! its own HTTP/2 connection (over TLS with the mesh identity a proxy
//! obtains: a join token spent on `Identity.Certify`) and holds the
//! Destination watches a proxy holds for its outbound targets, followed with
//! `mesh_client::Watch` exactly as the proxy follows them (reconnects,
//! snapshot-replaces-state). Every client notes when each endpoint address
//! first appeared in its view, so the time a change took to reach every
//! client can be read afterwards.
//!
//! `mesh-test-app watch-swarm` runs it as its own process for `cargo xtask
//! bench --scenario control-plane` and serves, over plain HTTP (xtask links
//! no gRPC): `GET /status` (JSON: clients, ramped, synced, reconnects) and
//! `GET /seen?addr=IP:PORT` (JSON: per client, the Unix time in µs at which
//! that address first appeared, or null).

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use mesh_client::watch::{Source, Watch};
use mesh_identity::SpiffeId;
use mesh_identity::tls::{CertificateDer, Credentials, PrivateKeyDer};
use mesh_proto::destination::{GetDestination, Update, destination_client::DestinationClient, update};
use mesh_proto::identity::{CertifyRequest, identity_client::IdentityClient};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// How long one client may take to get the first answer on all its watches
/// before the ramp moves on (it keeps trying in the background).
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// TLS to the control plane: the live credentials (with the certificate
/// `certify` installed) and the control plane's expected SPIFFE ID.
pub type Tls = (Arc<Credentials>, String);

/// What a swarm is made of.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The control plane's gRPC address, `http://host:port`.
    pub control_plane: String,
    /// TLS to the control plane (none: plaintext).
    pub tls: Option<Tls>,
    /// Each client's Destination targets (one entry per client).
    pub targets: Vec<Vec<String>>,
    /// Clients connecting at once during the ramp.
    pub connect_concurrency: usize,
}

/// What one client has seen.
#[derive(Debug, Default)]
struct Record {
    /// Unix µs at which each address first appeared in any of its watches.
    seen: Mutex<HashMap<SocketAddr, u64>>,
    /// Watches that have received their first snapshot.
    synced: AtomicUsize,
    /// Streams that failed or ended.
    reconnects: AtomicU64,
}

impl Record {
    fn saw(&self, addrs: impl Iterator<Item = SocketAddr>) {
        let now = unix_micros();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for a in addrs {
            seen.entry(a).or_insert(now);
        }
    }
}

/// Progress of a swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Clients in the swarm.
    pub clients: usize,
    /// Clients whose ramp step is over (synced, or timed out trying).
    pub ramped: usize,
    /// Clients that have the first answer on every one of their watches.
    pub synced: usize,
    /// Streams that failed or ended so far, across clients.
    pub reconnects: u64,
}

/// A running swarm; dropping it closes every stream.
#[derive(Debug)]
pub struct Swarm {
    records: Arc<Vec<Record>>,
    watches: Vec<usize>,
    ramped: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    ramp: JoinHandle<()>,
}

impl Swarm {
    /// Starts the clients in the background, `connect_concurrency` at a
    /// time (each connection's TLS handshake and first answers complete
    /// before another takes its place), so the control plane is not asked
    /// for a thousand handshakes in the same instant.
    pub fn start(config: SwarmConfig) -> Result<Self, tonic::transport::Error> {
        let channels = (0..config.targets.len())
            .map(|_| mesh_client::channel(&config.control_plane, config.tls.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let records: Arc<Vec<Record>> = Arc::new(config.targets.iter().map(|_| Record::default()).collect());
        let watches = config.targets.iter().map(Vec::len).collect();
        let ramped = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let permits = Arc::new(tokio::sync::Semaphore::new(config.connect_concurrency.max(1)));
        let ramp = tokio::spawn({
            let (records, ramped, tasks) = (records.clone(), ramped.clone(), tasks.clone());
            async move {
                let mut steps = Vec::new();
                for (i, (channel, targets)) in channels.into_iter().zip(config.targets).enumerate() {
                    let Ok(permit) = permits.clone().acquire_owned().await else { return };
                    let client = DestinationClient::new(channel);
                    let n = targets.len();
                    let mut spawned = targets
                        .into_iter()
                        .map(|target| {
                            let probe = Probe {
                                client: client.clone(),
                                req: GetDestination { target, context_workload: format!("swarm/client-{i}") },
                                endpoints: HashSet::new(),
                                records: records.clone(),
                                index: i,
                                synced: false,
                            };
                            tokio::spawn(Watch::new(probe, ()).run_until(std::future::pending::<()>()))
                        })
                        .collect();
                    tasks.lock().unwrap_or_else(|p| p.into_inner()).append(&mut spawned);
                    let (records, ramped) = (records.clone(), ramped.clone());
                    steps.push(tokio::spawn(async move {
                        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
                        while records[i].synced.load(Ordering::Relaxed) < n && tokio::time::Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        ramped.fetch_add(1, Ordering::Relaxed);
                        drop(permit);
                    }));
                }
                for s in steps {
                    let _ = s.await;
                }
            }
        });
        Ok(Self { records, watches, ramped, tasks, ramp })
    }

    /// Progress so far.
    pub fn status(&self) -> Status {
        let synced =
            self.records.iter().zip(&self.watches).filter(|(r, n)| r.synced.load(Ordering::Relaxed) >= **n).count();
        Status {
            clients: self.records.len(),
            ramped: self.ramped.load(Ordering::Relaxed),
            synced,
            reconnects: self.records.iter().map(|r| r.reconnects.load(Ordering::Relaxed)).sum(),
        }
    }

    /// For each client, the Unix time in µs at which `addr` first appeared
    /// in its view (`None`: not yet).
    pub fn seen(&self, addr: SocketAddr) -> Vec<Option<u64>> {
        self.records.iter().map(|r| r.seen.lock().unwrap_or_else(|p| p.into_inner()).get(&addr).copied()).collect()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.ramp.abort();
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
    }
}

/// One Destination watch of one client: folds the stream into the set of
/// addresses, noting each address's first appearance in the client's record.
struct Probe {
    client: DestinationClient<Channel>,
    req: GetDestination,
    endpoints: HashSet<SocketAddr>,
    records: Arc<Vec<Record>>,
    index: usize,
    /// The first snapshot has been counted in the record.
    synced: bool,
}

impl Source for Probe {
    type Item = Update;
    type State = ();
    type Stream = tonic::Streaming<Update>;

    async fn open(&mut self) -> Result<Self::Stream, tonic::Status> {
        Ok(self.client.get(self.req.clone()).await?.into_inner())
    }

    fn snapshot(&mut self, item: Update) -> Option<()> {
        let Some(update::Kind::Snapshot(s)) = item.kind else { return None };
        self.endpoints = s.endpoints.iter().filter_map(|e| e.address.as_ref()?.try_into().ok()).collect();
        let record = &self.records[self.index];
        record.saw(self.endpoints.iter().copied());
        if !self.synced {
            self.synced = true;
            record.synced.fetch_add(1, Ordering::Relaxed);
        }
        Some(())
    }

    fn update(&mut self, _: &(), item: Update) -> Option<()> {
        match item.kind {
            Some(update::Kind::Snapshot(_)) => return self.snapshot(item),
            Some(update::Kind::Add(set)) => {
                let added: Vec<SocketAddr> =
                    set.endpoints.iter().filter_map(|e| e.address.as_ref()?.try_into().ok()).collect();
                self.records[self.index].saw(added.iter().copied());
                self.endpoints.extend(added);
            }
            Some(update::Kind::Remove(set)) => {
                for a in &set.addresses {
                    if let Ok(addr) = SocketAddr::try_from(a) {
                        self.endpoints.remove(&addr);
                    }
                }
            }
            None => {}
        }
        Some(())
    }

    fn unchanged(&self, (): &(), (): &()) -> bool {
        true
    }

    fn disconnected(&mut self, outcome: Result<(), &tonic::Status>, retry_in: Duration) {
        self.records[self.index].reconnects.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = outcome {
            tracing::debug!(target = %self.req.target, code = ?e.code(), message = e.message(), ?retry_in, "swarm watch failed");
        }
    }
}

/// The targets of client `client` of a swarm over a registry of `services`
/// synthetic services (`mesh_spec::synthetic`): service 0, which every
/// client watches (the one a change is measured on), then `watches - 1`
/// others, spread so that the clients together cover the registry evenly.
pub fn targets_for(client: usize, watches: usize, services: usize) -> Vec<String> {
    let others = services.saturating_sub(1);
    let mut out = vec![mesh_spec::synthetic::target(0)];
    if others > 0 {
        let extra = watches.saturating_sub(1);
        out.extend((0..extra.min(others)).map(|k| mesh_spec::synthetic::target(1 + (client * extra + k) % others)));
    }
    out
}

/// Gets a certificate as a proxy does at start: the join token (its
/// identity read from the claims) and a fresh key's CSR sent to
/// `Identity.Certify` over TLS verified against `anchors_pem`. Returns the
/// credentials every client of the swarm presents, and the control plane's
/// identity.
pub async fn certify(control_plane: &str, token: &str, anchors_pem: &str) -> anyhow::Result<Tls> {
    let anchors = mesh_identity::pem::certs(anchors_pem).context("invalid trust anchors")?;
    let creds = Credentials::new(anchors).context("invalid trust anchors")?;
    let claims = mesh_identity::token::peek(token.trim()).context("the token is not a join token")?;
    let id: SpiffeId = claims.sub.parse().context("the token's subject is not a SPIFFE ID")?;
    let control = format!("spiffe://{}/ns/mesh-system/sa/mesh-control", id.trust_domain());
    let channel = mesh_client::channel(control_plane, Some((creds.clone(), control.clone())))?;
    let (key, csr) = mesh_identity::ca::generate_csr(&id).context("cannot make a CSR")?;
    let req = CertifyRequest { identity: id.to_string(), csr, token: token.trim().to_string() };
    let rsp = IdentityClient::new(channel)
        .certify(req)
        .await
        .with_context(|| format!("the control plane at {control_plane} refused the certificate request"))?
        .into_inner();
    if rsp.leaf.is_empty() {
        bail!("the control plane answered Certify without a certificate");
    }
    let mut chain = vec![CertificateDer::from(rsp.leaf)];
    chain.extend(rsp.intermediates.into_iter().map(CertificateDer::from));
    if let Some(b) = rsp.bundle {
        creds.set_bundle(b.anchors.into_iter().map(CertificateDer::from).collect())?;
    }
    creds.set_leaf(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))?;
    Ok((creds, control))
}

/// Serves `GET /status` and `GET /seen?addr=IP:PORT` for `swarm` on
/// `listener` until the task is dropped.
pub async fn serve_status(listener: TcpListener, swarm: Arc<Swarm>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let swarm = swarm.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (status, body) = answer(&swarm, req.uri().path(), req.uri().query());
            let mut rsp = http::Response::new(Full::new(Bytes::from(body)));
            *rsp.status_mut() = status;
            async move { Ok::<_, std::convert::Infallible>(rsp) }
        });
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc));
    }
}

fn answer(swarm: &Swarm, path: &str, query: Option<&str>) -> (http::StatusCode, String) {
    match path {
        "/status" => (http::StatusCode::OK, serde_json::json!(swarm.status()).to_string()),
        "/seen" => match query.and_then(|q| q.strip_prefix("addr=")).map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) => (http::StatusCode::OK, serde_json::json!(swarm.seen(addr)).to_string()),
            _ => (http::StatusCode::BAD_REQUEST, "give ?addr=IP:PORT\n".into()),
        },
        _ => (http::StatusCode::NOT_FOUND, "not found: GET /status or /seen?addr=IP:PORT\n".into()),
    }
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every client watches service 0; the others are spread without
    /// repeats within a client. Catches: clients that do not all watch the
    /// measured service, or extra watches piling onto one service.
    #[test]
    fn targets_cover_the_registry() {
        let all: Vec<Vec<String>> = (0..10).map(|c| targets_for(c, 4, 31)).collect();
        assert!(all.iter().all(|t| t.len() == 4 && t[0] == "svc-0.default:80"));
        let extra: HashSet<&String> = all.iter().flat_map(|t| &t[1..]).collect();
        assert_eq!(extra.len(), 30, "10 clients × 3 extra watches cover the 30 other services once");
        assert_eq!(targets_for(0, 5, 1), ["svc-0.default:80"]);
        assert_eq!(targets_for(3, 1, 100), ["svc-0.default:80"]);
        assert_eq!(targets_for(0, 9, 3).len(), 3, "no more watches than services");
    }
}
