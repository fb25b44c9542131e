//! Inbound authorization for HTTP: each request is checked against the
//! port's policy (client identity or network, and the request itself);
//! denied requests get 403 (gRPC: PERMISSION_DENIED) naming the policy.

use super::errors::{self, ProxyError};
use crate::body::Body;
use crate::metrics::Metrics;
use crate::policy::client::Live;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use mesh_policy::headers::is_grpc;
use mesh_policy::inbound::{Client, InboundPolicy, Verdict};
use prometheus_client::metrics::counter::Counter;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Checks every request before `inner` sees it. Cloned per request (hyper
/// clones the service for each): the connection's part is one `Arc`.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    conn: Arc<PerConnection>,
}

/// What every request of one connection shares.
#[derive(Debug)]
struct PerConnection {
    policy: Live<InboundPolicy>,
    client: Client,
    target: String,
    metrics: Metrics,
    counter: LastDecision,
}

/// The counter of the last decision: a connection's requests are mostly
/// decided by the same rule, so its labels are built (and the family
/// searched) once rather than per request.
#[derive(Debug, Default)]
struct LastDecision(Mutex<Option<Counted>>);

/// A decision's counter and what labels it.
#[derive(Debug)]
struct Counted {
    allowed: bool,
    policy: String,
    rule: String,
    counter: Counter,
}

impl<S> Authorize<S> {
    /// Authorizes `client`'s requests to `target` under `policy`.
    pub fn new(inner: S, policy: Live<InboundPolicy>, client: Client, target: String, metrics: Metrics) -> Self {
        Self {
            inner,
            conn: Arc::new(PerConnection { policy, client, target, metrics, counter: LastDecision::default() }),
        }
    }
}

impl LastDecision {
    /// Counts `v` in `inbound_authorization{target}`.
    fn count(&self, metrics: &Metrics, target: &str, v: &Verdict<'_>) {
        let mut last = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*last {
            Some(c) if c.allowed == v.allowed && c.policy == v.policy && c.rule == v.rule => {
                c.counter.inc();
            }
            _ => {
                let counter = metrics.authorization(target, v);
                counter.inc();
                *last = Some(Counted { allowed: v.allowed, policy: v.policy.into(), rule: v.rule.into(), counter });
            }
        };
    }
}

impl<S, B> tower::Service<Request<B>> for Authorize<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let conn = &self.conn;
        let policy = conn.policy.current();
        let verdict = policy.authorize(&conn.client, Some(&parts));
        conn.counter.count(&conn.metrics, &conn.target, &verdict);
        if !verdict.allowed {
            tracing::debug!(client = ?conn.client, policy = %verdict.policy, rule = %verdict.rule, path = parts.uri.path(), "request denied");
            let grpc = is_grpc(&parts.headers);
            let denied = ProxyError::Denied { policy: verdict.policy.to_string(), rule: verdict.rule.to_string() };
            let rsp = errors::response(&denied, grpc);
            return Box::pin(async move { Ok(rsp) });
        }
        drop(policy);
        let fut = self.inner.call(Request::from_parts(parts, body));
        Box::pin(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    /// Catches a memo that ignores what labels the decision (a denial
    /// counted under the last allow) or never takes a new decision in.
    #[test]
    fn each_decision_is_counted_under_its_own_labels() {
        let metrics = Metrics::default();
        let mut reg = Registry::default();
        metrics.register(&mut reg);
        let last = LastDecision::default();
        let allow = Verdict { allowed: true, policy: "p", rule: "web" };
        let deny = Verdict { allowed: false, policy: "p", rule: "default:deny" };
        let other = Verdict { allowed: true, policy: "q", rule: "web" };
        for v in [allow, allow, deny, allow, other] {
            last.count(&metrics, "app:80", &v);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        let count = |policy: &str, rule: &str, decision: &str| {
            let key = format!(
                r#"inbound_authorization_total{{target="app:80",policy="{policy}",rule="{rule}",decision="{decision}"}} "#
            );
            out.lines().find_map(|l| l.strip_prefix(key.as_str())).map(str::to_string)
        };
        assert_eq!(count("p", "web", "allow").as_deref(), Some("3"), "{out}");
        assert_eq!(count("p", "default:deny", "deny").as_deref(), Some("1"), "{out}");
        assert_eq!(count("q", "web", "allow").as_deref(), Some("1"), "{out}");
    }
}
