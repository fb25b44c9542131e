//! Inbound: connections from peers (their proxies) to the local app.

use crate::balance::{Balancer, EndpointFactory};
use crate::config::InboundConfig;
use crate::conn::{self, Context, Route};
use crate::metrics::{Direction, Labels, Tls};
use tokio::net::TcpListener;

/// Serves the inbound listener until shutdown.
pub async fn serve(listener: TcpListener, config: InboundConfig, factory: EndpointFactory, ctx: Context) {
    let app = config.app;
    let balancer = Balancer::fixed(&app.to_string(), app, factory);
    let opaque = config.opaque_ports.contains(&app.port());
    let labels = Labels { direction: Direction::inbound, target: app.to_string(), tls: Tls::No };
    let route = Route { balancer, labels, opaque };
    conn::accept_loop(listener, ctx, move |_stream| {
        let route = route.clone();
        async move { Some(route) }
    })
    .await;
}
