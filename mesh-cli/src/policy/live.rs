//! Policies from a running control plane: the first message of the Policy
//! API's watches (what a proxy would receive now), and the Destination API
//! to find a backend's workloads (identity and dialled port).

use super::explain::Destination;
use anyhow::{anyhow, bail};
use mesh_identity::SpiffeId;
use mesh_identity::tls::Credentials;
use mesh_proto::destination::{self as dpb, destination_client::DestinationClient};
use mesh_proto::policy::{self as pb, policy_client::PolicyClient};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// How long one answer may take (connecting included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A control plane's Policy and Destination APIs.
#[derive(Debug)]
pub struct LiveSource {
    url: String,
    policy: PolicyClient<Channel>,
    destination: DestinationClient<Channel>,
}

/// The Destination API's first answer for a target.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Whether the control plane knows a service for it.
    pub exists: bool,
    /// Whether the port is opaque TCP.
    pub opaque: bool,
    /// Endpoints: address and identity (empty: not meshed with identity).
    pub endpoints: Vec<(SocketAddr, String)>,
}

impl LiveSource {
    /// A lazily connecting client of the control plane at `url`; with `tls`
    /// (trust anchors and the control plane's expected SPIFFE ID) over TLS,
    /// as proxies connect.
    pub fn new(url: &str, tls: Option<(Arc<Credentials>, String)>) -> anyhow::Result<Self> {
        let channel =
            mesh_client::channel(url, tls).map_err(|e| anyhow!("invalid control plane address {url:?}: {e}"))?;
        Ok(Self {
            url: url.to_string(),
            policy: PolicyClient::new(channel.clone()),
            destination: DestinationClient::new(channel),
        })
    }

    fn failed(&self, what: &str, status: &tonic::Status) -> anyhow::Error {
        let mut reason = status.message().to_string();
        let mut source = std::error::Error::source(status);
        while let Some(s) = source {
            let text = s.to_string();
            if !reason.contains(&text) {
                reason = if reason.is_empty() { text } else { format!("{reason}: {text}") };
            }
            source = s.source();
        }
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                anyhow!("cannot reach the control plane at {} ({what}): {reason}", self.url)
            }
            code => anyhow!("the control plane at {} refused {what}: {code:?}: {reason}", self.url),
        }
    }

    async fn timed<T>(&self, what: &str, fut: impl Future<Output = Result<T, tonic::Status>>) -> anyhow::Result<T> {
        match tokio::time::timeout(ANSWER_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(status)) => Err(self.failed(what, &status)),
            Err(_) => bail!("the control plane at {} did not answer ({what}) within {ANSWER_TIMEOUT:?}", self.url),
        }
    }

    /// The outbound policy a proxy would get for `target` now.
    pub async fn outbound(&mut self, target: &str) -> anyhow::Result<pb::OutboundPolicy> {
        let what = format!("the outbound policy of {target}");
        let mut client = self.policy.clone();
        let req = pb::OutboundRequest { target: target.to_string() };
        let first =
            self.timed(&what, async move { client.watch_outbound(req).await?.into_inner().message().await }).await?;
        first.ok_or_else(|| anyhow!("the control plane at {} ended the stream of {what} without an answer", self.url))
    }

    /// The inbound policy a proxy of `namespace`/`service_account` would get
    /// for its `port` now.
    pub async fn inbound(
        &mut self,
        namespace: &str,
        service_account: &str,
        port: u16,
    ) -> anyhow::Result<pb::InboundPolicy> {
        let what = format!("the inbound policy of {namespace}/{service_account}:{port}");
        let mut client = self.policy.clone();
        let req = pb::InboundRequest {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            port: u32::from(port),
        };
        let first =
            self.timed(&what, async move { client.watch_inbound(req).await?.into_inner().message().await }).await?;
        first.ok_or_else(|| anyhow!("the control plane at {} ended the stream of {what} without an answer", self.url))
    }

    /// What the Destination API says about `target` now.
    pub async fn resolve(&mut self, target: &str) -> anyhow::Result<Resolved> {
        let what = format!("the endpoints of {target}");
        let mut client = self.destination.clone();
        let req = dpb::GetDestination { target: target.to_string(), context_workload: "meshctl".into() };
        let first = self.timed(&what, async move { client.get(req).await?.into_inner().message().await }).await?;
        let Some(dpb::Update { kind: Some(dpb::update::Kind::Snapshot(snap)) }) = first else {
            bail!("the control plane at {} did not start {what} with a snapshot", self.url);
        };
        let opaque = snap.service.as_ref().is_some_and(|s| s.protocol == dpb::ProtocolHint::Opaque as i32);
        let endpoints = snap
            .endpoints
            .iter()
            .filter_map(|e| {
                let addr = SocketAddr::try_from(e.address.as_ref()?).ok()?;
                Some((addr, e.identity.clone()))
            })
            .collect();
        Ok(Resolved { exists: snap.exists, opaque, endpoints })
    }

    /// The destination workloads of a backend: one per identity among its
    /// endpoints, with the inbound policy of each port their proxies are
    /// dialled on.
    pub async fn destinations(&mut self, backend: &str, resolve: &str) -> anyhow::Result<Vec<Destination>> {
        let empty = |note: String| Destination {
            backend: backend.to_string(),
            workload: None,
            policies: Vec::new(),
            notes: vec![note],
        };
        let resolved = self.resolve(resolve).await?;
        if !resolved.exists {
            return Ok(vec![empty(format!("the control plane knows no service {resolve}: requests to it fail"))]);
        }
        if resolved.endpoints.is_empty() {
            return Ok(vec![empty(format!(
                "{resolve} has no endpoints: give --to-namespace, --to-service-account and --to-port to judge its workloads"
            ))]);
        }
        let mut by_identity: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        for (addr, id) in &resolved.endpoints {
            by_identity.entry(id.clone()).or_default().insert(addr.port());
        }
        let mut out = Vec::new();
        for (id, ports) in by_identity {
            if id.is_empty() {
                out.push(empty(format!(
                    "endpoints on port(s) {} have no mesh identity: their proxies enforce no authorization",
                    join(&ports)
                )));
                continue;
            }
            let Ok(spiffe) = id.parse::<SpiffeId>() else {
                out.push(empty(format!("endpoint identity {id:?} is not a workload SPIFFE ID")));
                continue;
            };
            let (ns, sa) = (spiffe.namespace().to_string(), spiffe.service_account().to_string());
            let mut per_port = Vec::new();
            for port in ports {
                per_port.push((port, self.inbound(&ns, &sa, port).await?));
            }
            out.push(Destination {
                backend: backend.to_string(),
                workload: Some((ns, sa)),
                policies: Destination::group(per_port),
                notes: Vec::new(),
            });
        }
        Ok(out)
    }
}

fn join(ports: &BTreeSet<u16>) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
}
