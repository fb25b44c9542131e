//! Inbound: connections from peers (their proxies) to the local app.

use crate::balance::{Balancer, EndpointFactory};
use crate::config::InboundConfig;
use crate::conn::{self, Context, Route};
use crate::config::InboundMode;
use crate::metrics::{Direction, Labels};
use crate::tls::MeshTls;
use crate::orig_dst::original_dst;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// Serves the inbound listener until shutdown. With `tls`, mesh peers'
/// mTLS is terminated here; plaintext is refused on strict ports.
///
/// A connection redirected by iptables goes to its original destination
/// (the app's port on the pod's address); one that came here directly goes
/// to the configured app address.
pub async fn serve(
    listener: TcpListener,
    config: InboundConfig,
    factory: EndpointFactory,
    tls: Option<Arc<MeshTls>>,
    ctx: Context,
) {
    let routes: Arc<Mutex<HashMap<SocketAddr, Route>>> = Arc::default();
    let config = Arc::new(config);
    conn::accept_loop(listener, ctx, move |stream| {
        let target = original_dst(stream).or(config.app);
        let route = target.map(|app| {
            let mut routes = routes.lock().unwrap_or_else(|p| p.into_inner());
            routes.entry(app).or_insert_with(|| route_to(app, &config, &factory, &tls)).clone()
        });
        if route.is_none() {
            tracing::warn!("inbound connection with no original destination and no --app: closing");
        }
        async move { route }
    })
    .await;
}

fn route_to(app: SocketAddr, config: &InboundConfig, factory: &EndpointFactory, tls: &Option<Arc<MeshTls>>) -> Route {
    Route {
        balancer: Balancer::fixed(&app.to_string(), app, factory.clone()),
        labels: Labels::new(Direction::inbound, app.to_string()),
        opaque: config.opaque_ports.contains(&app.port()),
        accept_tls: tls.clone(),
        strict: config.mode_for(app.port()) == InboundMode::Strict,
    }
}
