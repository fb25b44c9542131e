//! Outbound: connections from the local app to mesh services.

use crate::balance::Balancer;
use crate::conn::{self, Context, Route};
use crate::metrics::{Direction, Labels, Tls};
use crate::connect::Connector;
use mesh_proto::destination::ProtocolHint;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves one explicit upstream listener: every connection goes to `balancer`.
pub async fn serve_upstream(listener: TcpListener, balancer: Arc<Balancer>, connector: Connector, ctx: Context) {
    let failfast = ctx.limits.failfast_timeout;
    conn::accept_loop(listener, ctx, move |_stream| {
        let balancer = balancer.clone();
        let connector = connector.clone();
        async move {
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
    })
    .await;
}
