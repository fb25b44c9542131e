//! Outbound: connections from the local app to mesh services.

use crate::balance::Balancer;
use crate::conn::{self, Context, Route};
use crate::metrics::{Direction, Labels, Tls};
use crate::connect::Connector;
use mesh_proto::destination::ProtocolHint;
use crate::balancers::Balancers;
use crate::orig_dst::original_dst;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves one explicit upstream listener: every connection goes to `balancer`.
pub async fn serve_upstream(listener: TcpListener, balancer: Arc<Balancer>, connector: Connector, ctx: Context) {
    let failfast = ctx.limits.failfast_timeout;
    conn::accept_loop(listener, ctx, move |_stream| route(balancer.clone(), connector.clone(), failfast)).await;
}

/// Serves the transparent outbound listener: each connection iptables
/// redirected here goes to its original destination, resolved through
/// discovery (a service's virtual IP or an endpoint's address); destinations
/// discovery does not know pass through untouched.
pub async fn serve_transparent(listener: TcpListener, balancers: Balancers, connector: Connector, ctx: Context) {
    let failfast = ctx.limits.failfast_timeout;
    conn::accept_loop(listener, ctx, move |stream| {
        let dst = original_dst(stream);
        let balancers = balancers.clone();
        let connector = connector.clone();
        async move {
            let Some(dst) = dst else {
                tracing::warn!("outbound connection was not redirected by iptables; closing (use --upstream for explicit routing)");
                return None;
            };
            route(balancers.on_demand(&dst.to_string()), connector, failfast).await
        }
    })
    .await;
}

async fn route(balancer: Arc<Balancer>, connector: Connector, failfast: Duration) -> Option<Route> {
    let opaque = balancer.protocol_hint(failfast).await == Some(ProtocolHint::Opaque);
    let mut labels = Labels::new(Direction::outbound, balancer.target());
    // The service's endpoints share its identity; label by it.
    let list = balancer.current();
    if let Some(id) = list.endpoints.first().and_then(|e| e.meta.identity.as_deref())
        && connector.secures(Some(id))
    {
        labels.tls = Tls::Yes;
        labels.peer_id = id.to_string();
    }
    Some(Route { balancer, labels, opaque, accept_tls: None, strict: false })
}
