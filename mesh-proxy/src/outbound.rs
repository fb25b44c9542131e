//! Outbound: connections from the local app to mesh services.

use crate::balance::Balancer;
use crate::conn::{self, Context, Route};
use crate::metrics::{Direction, Labels, Tls};
use mesh_proto::destination::ProtocolHint;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves one explicit upstream listener: every connection goes to `balancer`.
pub async fn serve_upstream(listener: TcpListener, balancer: Arc<Balancer>, ctx: Context) {
    let failfast = ctx.limits.failfast_timeout;
    let labels = Labels { direction: Direction::outbound, target: balancer.target().to_string(), tls: Tls::No };
    conn::accept_loop(listener, ctx, move |_stream| {
        let balancer = balancer.clone();
        let labels = labels.clone();
        async move {
            let opaque = balancer.protocol_hint(failfast).await == Some(ProtocolHint::Opaque);
            Some(Route { balancer, labels, opaque })
        }
    })
    .await;
}
