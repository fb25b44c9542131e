//! `meshctl check`'s live probe: one mTLS connection between two meshed
//! workloads' proxies that proves the data plane works, and nothing more.
//!
//! The source proxy's admin port serves `POST /check/probe?target=name.ns:port`
//! ([`run`]). It resolves the target through discovery like any outbound
//! request, connects to one endpoint with mTLS offering the ALPN
//! `mesh/probe`, sends nothing, and reads the target proxy's [`Answer`]:
//! its authorization decision for the source's identity on the port
//! dialled ([`answer`], called by the inbound pipeline; the app never sees a
//! probe). The admin port is reachable by the API server's pod proxy and by
//! any pod, so the endpoint is harmless by construction: only a mesh
//! service discovery knows can be a target (nothing from the request
//! becomes an address), no request data is carried, nothing changes, and
//! [`Limiter`] allows one probe at a time and one a second.

use crate::balancers::Balancers;
use crate::connect::Connector;
use crate::tls::MeshProtocol;
use mesh_policy::inbound::{Client, InboundPolicy};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The admin path of the probe.
pub const PATH: &str = "/check/probe";

/// The least time between two probes' starts.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How long the source waits for the target's answer (and the target for
/// writing it).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer the source reads.
const MAX_ANSWER: u64 = 1024;

/// A probe target: a mesh service port by name, normalised to
/// `name.namespace:port`. IP addresses and anything but DNS labels are
/// refused, so a probe can only go where discovery sends it.
pub fn parse_target(text: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("invalid probe target {text:?}: {why} (expected name.namespace:port)"));
    let Some((host, port)) = text.rsplit_once(':') else { return bad("no port") };
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return bad("the port is not a number in 1-65535"),
    };
    let labels: Vec<&str> = host.split('.').collect();
    let (name, namespace) = match labels.as_slice() {
        [name, namespace] | [name, namespace, "svc", ..] => (*name, *namespace),
        _ => return bad("a mesh service is named name.namespace"),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !label_ok(name) || !label_ok(namespace) || labels.iter().skip(2).any(|l| !label_ok(l)) {
        return bad("names are lowercase DNS labels");
    }
    // A numeric "name" would be half an IPv4 address.
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return bad("an IP address is not a mesh service");
    }
    Ok(format!("{name}.{namespace}:{port}"))
}

/// What the target proxy answers a probe: its authorization decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the port's policy admits the probing identity.
    pub authorized: bool,
    /// The deciding policy.
    pub policy: String,
    /// The deciding rule.
    pub rule: String,
}

/// The target's decision for `client` under the port's `policy` (`None`:
/// the port has no authorization, so everything is admitted). Decided as
/// for a connection: rules that match HTTP requests do not apply.
pub fn decide(policy: Option<&InboundPolicy>, client: &Client) -> Answer {
    match policy {
        Some(p) => {
            let v = p.authorize(client, None);
            Answer { authorized: v.allowed, policy: v.policy.to_string(), rule: v.rule.to_string() }
        }
        None => Answer { authorized: true, policy: "none".into(), rule: "no-authorization".into() },
    }
}

/// Answers a probe connection on the target side: one JSON line, then
/// close. Reads nothing from the client.
pub async fn answer<IO>(mut io: IO, answer: &Answer)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut line = serde_json::to_vec(answer).unwrap_or_default();
    line.push(b'\n');
    let write = async {
        io.write_all(&line).await?;
        io.shutdown().await
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, write).await {
        Ok(Ok(())) => tracing::debug!(?answer, "live probe answered"),
        Ok(Err(e)) => tracing::debug!(error = %e, "live probe: the answer could not be written"),
        Err(_) => tracing::debug!("live probe: the answer timed out"),
    }
}

/// The source proxy's report, as `meshctl check` reads it (the fields of
/// `mesh_kube::check::rules::ProbeReport`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// This proxy's identity (the one it presented).
    pub source_identity: String,
    /// The target, `name.namespace:port`.
    pub target: String,
    /// The endpoint probed.
    pub endpoint: Option<String>,
    /// The identity discovery gave the endpoint.
    pub expected_identity: String,
    /// The identity in the certificate the endpoint presented.
    pub peer_identity: Option<String>,
    /// The negotiated TLS version.
    pub tls_version: Option<String>,
    /// The target's authorization decision.
    pub authorized: Option<bool>,
    /// `policy/rule` that decided.
    pub decided_by: Option<String>,
    /// Why the probe failed.
    pub error: Option<String>,
}

/// What a probe needs of the source proxy.
#[derive(Debug, Clone)]
pub struct Source {
    /// Discovery, through the same balancers as outbound requests.
    pub balancers: Balancers,
    /// The outbound connector (mTLS with this proxy's certificate).
    pub connector: Connector,
    /// How long to wait for discovery.
    pub failfast: Duration,
}

/// Runs one probe from this proxy (identity `source`) to `target` (as
/// returned by [`parse_target`]).
pub async fn run(env: &Source, source: Option<String>, target: &str) -> Report {
    let mut report = Report {
        source_identity: source.clone().unwrap_or_default(),
        target: target.to_string(),
        endpoint: None,
        expected_identity: String::new(),
        peer_identity: None,
        tls_version: None,
        authorized: None,
        decided_by: None,
        error: None,
    };
    if source.is_none() {
        report.error = Some("this proxy holds no certificate, so it has no mTLS identity".into());
        return report;
    }
    let balancer = env.balancers.on_demand(target);
    let list = match balancer.ready(env.failfast).await {
        Ok(l) if l.service.is_some() => l,
        _ => {
            let known = balancer.current().service.is_some();
            report.error = Some(if known {
                format!("{target} has no ready endpoint")
            } else {
                format!("discovery knows no mesh service {target}")
            });
            return report;
        }
    };
    let Some(endpoint) = list.pick() else {
        report.error = Some(format!("{target} has no ready endpoint"));
        return report;
    };
    let addr = endpoint.meta.addr;
    report.endpoint = Some(addr.to_string());
    let Some(expected) = endpoint.meta.identity.clone() else {
        report.error = Some(format!("{target}'s endpoint {addr} is not meshed (discovery names no identity)"));
        return report;
    };
    report.expected_identity = expected.clone();
    let mut io = match env.connector.connect(addr, Some(&expected), MeshProtocol::Probe).await {
        Ok(io) => io,
        Err(e) => {
            report.error = Some(format!("connecting to {addr}: {e}"));
            return report;
        }
    };
    report.peer_identity = io.peer_identity();
    report.tls_version = io.tls_version();
    let mut buf = Vec::new();
    let mut limited = (&mut io).take(MAX_ANSWER);
    match tokio::time::timeout(ANSWER_TIMEOUT, limited.read_to_end(&mut buf)).await {
        Ok(Ok(_)) => match serde_json::from_slice::<Answer>(&buf) {
            Ok(a) => {
                report.authorized = Some(a.authorized);
                report.decided_by = Some(format!("{}/{}", a.policy, a.rule));
            }
            Err(_) if buf.is_empty() => {
                report.error = Some(format!("{addr} closed without an answer (a proxy without the live probe?)"));
            }
            Err(e) => report.error = Some(format!("{addr} answered something else: {e}")),
        },
        Ok(Err(e)) => report.error = Some(format!("reading {addr}'s answer: {e}")),
        Err(_) => report.error = Some(format!("{addr} did not answer within {ANSWER_TIMEOUT:?}")),
    }
    report
}

/// One probe at a time, and at most one per [`INTERVAL`].
#[derive(Debug, Default)]
pub struct Limiter {
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    in_flight: bool,
    last_start: Option<Instant>,
}

/// A running probe's place; dropping it lets the next one start.
#[derive(Debug)]
pub struct Permit<'a>(&'a Limiter);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner()).in_flight = false;
    }
}

impl Limiter {
    /// Starts a probe at `now`, or says why not.
    pub fn try_start(&self, now: Instant) -> Result<Permit<'_>, String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.in_flight {
            return Err("a live probe is already running; one at a time".into());
        }
        if let Some(last) = s.last_start {
            let since = now.saturating_duration_since(last);
            if since < INTERVAL {
                let wait = INTERVAL - since;
                return Err(format!("at most one live probe a second; retry in {} ms", wait.as_millis().max(1)));
            }
        }
        s.in_flight = true;
        s.last_start = Some(now);
        Ok(Permit(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a target parser that lets an address through (a probe must
    /// never dial what the request names) or mangles a service name.
    #[test]
    fn only_mesh_service_names_are_targets() {
        assert_eq!(parse_target("books.shop:7001").as_deref(), Ok("books.shop:7001"));
        assert_eq!(parse_target("books.shop.svc.cluster.local:80").as_deref(), Ok("books.shop:80"));
        for bad in [
            "10.0.0.1:80",
            "10.1:80",
            "[::1]:80",
            "127.0.0.1.nip:80",
            "books:80",
            "books.shop",
            "books.shop:0",
            "books.shop:99999",
            "Books.shop:80",
            "books.shop.example.com:80",
            "books.shop:80/x",
            "bo_oks.shop:80",
            "-b.shop:80",
            "",
        ] {
            assert!(parse_target(bad).is_err(), "{bad} accepted");
        }
    }

    /// Catches a limiter that lets two probes run at once, starts a second
    /// within the interval, or never frees its place.
    #[test]
    fn one_probe_at_a_time_and_one_a_second() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let p = l.try_start(t0).expect("first");
        assert!(l.try_start(t0 + Duration::from_secs(5)).expect_err("in flight").contains("already running"));
        drop(p);
        assert!(
            l.try_start(t0 + Duration::from_millis(500)).expect_err("too soon").contains("one live probe a second")
        );
        let p = l.try_start(t0 + INTERVAL).expect("after the interval");
        drop(p);
        assert!(l.try_start(t0 + INTERVAL + Duration::from_millis(999)).is_err());
        assert!(l.try_start(t0 + INTERVAL * 2).is_ok());
    }

    /// Catches a target that answers something other than its policy's
    /// decision for the probing identity (an allow-all answer would make
    /// `meshctl check` pass a mesh whose authorization is off).
    #[test]
    fn the_answer_is_the_policys_decision_for_the_caller() {
        use mesh_proto::policy as pb;
        let policy = InboundPolicy::compile(&pb::InboundPolicy {
            name: "books".into(),
            default: pb::DefaultAction::Deny as i32,
            authorizations: vec![pb::Authorization {
                name: "web".into(),
                identities: vec!["spiffe://td/ns/shop/sa/web".into()],
                ..Default::default()
            }],
            require_mtls: true,
        })
        .expect("compiles");
        let web = Client { identity: Some("spiffe://td/ns/shop/sa/web".into()), ip: [10, 0, 0, 1].into() };
        let other = Client { identity: Some("spiffe://td/ns/shop/sa/other".into()), ip: [10, 0, 0, 2].into() };
        let allowed = decide(Some(&policy), &web);
        assert_eq!((allowed.authorized, allowed.rule.as_str()), (true, "web"), "{allowed:?}");
        let denied = decide(Some(&policy), &other);
        assert!(!denied.authorized && denied.rule == "default:deny", "{denied:?}");
        assert!(decide(None, &other).authorized);
    }
}
