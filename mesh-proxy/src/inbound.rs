//! Inbound: connections from peers (their proxies) to the local app.

use crate::balance::{Balancer, EndpointFactory};
use crate::config::InboundConfig;
use crate::config::InboundMode;
use crate::conn::{self, Context, Expect, Route};
use crate::metrics::{Direction, Labels};
use crate::orig_dst::original_dst;
use crate::policy::client::Policies;
use crate::tls::MeshTls;
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
pub async fn serve(listener: TcpListener, config: InboundConfig, env: Inbound, ctx: Context) {
    let routes: Arc<Mutex<HashMap<SocketAddr, Route>>> = Arc::default();
    // Universal mode knows its one route up front: start watching its
    // authorization now, so the first peer is not the one to wait for it (or,
    // were the control plane to go away in between, be refused as pending).
    if let (Some(app), Ok(local)) = (config.app, listener.local_addr()) {
        let route = route_to(app, local.port(), &config, &env);
        routes.lock().unwrap_or_else(|p| p.into_inner()).insert(app, route);
    }
    let config = Arc::new(config);
    conn::accept_loop(listener, "inbound", ctx, move |stream| {
        let dst = original_dst(stream);
        let target = dst.or(config.app);
        // Policies are selected by the port the peer dialled: the app's port
        // when iptables redirected it, this listener's port in universal mode
        // (where the registry lists the proxy's address as the endpoint).
        let dialled = dst.or_else(|| stream.local_addr().ok()).map_or(0, |a| a.port());
        let route = target.map(|app| {
            let mut routes = routes.lock().unwrap_or_else(|p| p.into_inner());
            routes.entry(app).or_insert_with(|| route_to(app, dialled, &config, &env)).clone()
        });
        if route.is_none() {
            tracing::warn!("inbound connection with no original destination and no --app: closing");
        }
        async move { route }
    })
    .await;
}

/// What inbound routing needs besides its configuration.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Connections to the app (plaintext, local).
    pub factory: EndpointFactory,
    /// Terminates mesh peers' mTLS.
    pub tls: Option<Arc<MeshTls>>,
    /// Authorization policies.
    pub policies: Policies,
    /// This workload's namespace and service account, to select policies.
    pub workload: Option<(String, String)>,
}

fn route_to(app: SocketAddr, dialled: u16, config: &InboundConfig, env: &Inbound) -> Route {
    let authorization = env.workload.as_ref().map(|(ns, sa)| env.policies.inbound(ns, sa, dialled));
    Route {
        balancer: Balancer::fixed(&app.to_string(), app, env.factory.clone()),
        labels: Labels::new(Direction::inbound, app.to_string()),
        expect: if config.opaque_ports.contains(&app.port()) { Expect::Opaque } else { Expect::Detect },
        accept_tls: env.tls.clone(),
        strict: config.mode_for(app.port()) == InboundMode::Strict,
        outbound: None,
        authorization,
    }
}
