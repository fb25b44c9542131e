//! Registration with the control plane: one `Workloads.Register` stream,
//! kept open for the proxy's whole life, tells the control plane that this
//! proxy exists and where its admin port is (so `meshctl stat`, `top`, `tap`
//! and `edges` can find it). When the stream ends the control plane forgets
//! the proxy; the proxy reconnects with backoff and registers again.

use mesh_core::backoff::Backoff;
use mesh_core::shutdown::Shutdown;
use mesh_proto::workloads::{RegisterRequest, workloads_client::WorkloadsClient};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::Channel;

/// What this proxy tells the control plane about itself.
pub fn request(
    workload: &str,
    identity: Option<String>,
    admin: SocketAddr,
    inbound: Option<SocketAddr>,
) -> RegisterRequest {
    RegisterRequest {
        workload: workload.to_string(),
        identity: identity.unwrap_or_default(),
        admin_addr: admin.to_string(),
        inbound_addr: inbound.map(|a| a.to_string()).unwrap_or_default(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Keeps this proxy registered until shutdown.
pub async fn run(channel: Channel, req: RegisterRequest, mut shutdown: Shutdown) {
    let mut client = WorkloadsClient::new(channel);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let attempt = async {
            let mut stream = client.register(req.clone()).await?.into_inner();
            while let Some(ack) = stream.message().await? {
                backoff.reset();
                tracing::debug!(admin = %ack.admin_addr, "registered with the control plane");
            }
            Ok::<(), tonic::Status>(())
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = shutdown.triggered() => return,
        };
        let delay = backoff.next_delay();
        match result {
            Ok(()) => tracing::debug!(?delay, "registration stream ended; registering again"),
            Err(e) => {
                tracing::debug!(code = ?e.code(), message = e.message(), ?delay, "registration failed; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.triggered() => return,
        }
    }
}
