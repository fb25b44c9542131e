//! Inbound: connections from peers (their proxies) to the local app.

use crate::balance::{Balancer, EndpointFactory};
use crate::config::InboundConfig;
use crate::conn::{self, Context, Route};
use crate::config::InboundMode;
use crate::metrics::{Direction, Labels};
use crate::tls::MeshTls;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the inbound listener until shutdown. With `tls`, mesh peers'
/// mTLS is terminated here; plaintext is refused on strict ports.
pub async fn serve(
    listener: TcpListener,
    config: InboundConfig,
    factory: EndpointFactory,
    tls: Option<Arc<MeshTls>>,
    ctx: Context,
) {
    let app = config.app;
    let balancer = Balancer::fixed(&app.to_string(), app, factory);
    let opaque = config.opaque_ports.contains(&app.port());
    let labels = Labels::new(Direction::inbound, app.to_string());
    let strict = config.mode_for(app.port()) == InboundMode::Strict;
    let route = Route { balancer, labels, opaque, accept_tls: tls, strict };
    conn::accept_loop(listener, ctx, move |_stream| {
        let route = route.clone();
        async move { Some(route) }
    })
    .await;
}
