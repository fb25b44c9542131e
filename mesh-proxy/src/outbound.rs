//! Outbound: connections from the local app to mesh services.

use crate::balance::Balancer;
use crate::balancers::Balancers;
use crate::conn::{self, Context, Expect, Route};
use crate::connect::Connector;
use crate::metrics::{Direction, Labels, Tls};
use crate::orig_dst::original_dst;
use crate::policy::client::{Live, Policies};
use mesh_policy::outbound::OutboundPolicy;
use mesh_proto::destination::ProtocolHint;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves one explicit upstream listener: every connection goes to `balancer`.
pub async fn serve_upstream(listener: TcpListener, balancer: Arc<Balancer>, env: Outbound, ctx: Context) {
    let failfast = ctx.limits.failfast_timeout;
    let policy = env.policies.outbound(balancer.target());
    let name = format!("upstream:{}", balancer.target());
    conn::accept_loop(listener, &name, ctx, move |_stream| {
        route(balancer.clone(), policy.clone(), env.clone(), failfast)
    })
    .await;
}

/// What outbound routing needs besides the target.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Opens (and secures) endpoint connections.
    pub connector: Connector,
    /// Outbound policies.
    pub policies: Policies,
    /// Balancers for targets and route backends.
    pub balancers: Balancers,
}

/// Serves the transparent outbound listener: each connection iptables
/// redirected here goes to its original destination, resolved through
/// discovery (a service's virtual IP or an endpoint's address); destinations
/// discovery does not know pass through untouched.
pub async fn serve_transparent(listener: TcpListener, env: Outbound, ctx: Context) {
    let failfast = ctx.limits.failfast_timeout;
    conn::accept_loop(listener, "outbound", ctx, move |stream| {
        let dst = original_dst(stream);
        let env = env.clone();
        async move {
            let Some(dst) = dst else {
                tracing::warn!(
                    "outbound connection was not redirected by iptables; closing (use --upstream for explicit routing)"
                );
                return None;
            };
            let target = dst.to_string();
            let policy = env.policies.outbound(&target);
            route(env.balancers.on_demand(&target), policy, env, failfast).await
        }
    })
    .await;
}

async fn route(
    balancer: Arc<Balancer>,
    policy: Live<OutboundPolicy>,
    env: Outbound,
    failfast: Duration,
) -> Option<Route> {
    let connector = &env.connector;
    let expect = match balancer.protocol_hint(failfast).await {
        Some(ProtocolHint::Opaque) => Expect::Opaque,
        Some(ProtocolHint::Http1 | ProtocolHint::Http2) => Expect::Http,
        Some(ProtocolHint::Unspecified) | None => Expect::Detect,
    };
    let mut labels = Labels::new(Direction::outbound, balancer.target());
    // The service's endpoints share its identity; label by it.
    let list = balancer.current();
    if let Some(id) = list.endpoints.first().and_then(|e| e.meta.identity.as_deref())
        && connector.secures(Some(id))
    {
        labels.tls = Tls::Yes;
        labels.peer_id = id.to_string();
    }
    let outbound = Some((policy, env.balancers.clone()));
    Some(Route { balancer, labels, expect, accept_tls: None, strict: false, outbound, authorization: None })
}
