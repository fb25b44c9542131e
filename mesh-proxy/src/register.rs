//! Registration with the control plane: one `Workloads.Register` stream,
//! kept open for the proxy's whole life, tells the control plane that this
//! proxy exists and where its admin port is (so `meshctl stat`, `top`, `tap`
//! and `edges` can find it). When the stream ends the control plane forgets
//! the proxy; the proxy reconnects with backoff and registers again (a
//! [`mesh_client::Watch`] run for its side effect: the open stream).

use mesh_client::watch::{Source, Watch};
use mesh_core::backoff::Backoff;
use mesh_core::shutdown::Shutdown;
use mesh_proto::workloads::{RegisterAck, RegisterRequest, workloads_client::WorkloadsClient};
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
    let registration = Registration { client: WorkloadsClient::new(channel), req };
    Watch::new(registration, ())
        .with_backoff(Backoff::new(Duration::from_millis(200), Duration::from_secs(10)))
        .run_until(async move { shutdown.triggered().await })
        .await;
}

/// The registration stream; its only state is being open.
struct Registration {
    client: WorkloadsClient<Channel>,
    req: RegisterRequest,
}

impl Source for Registration {
    type Item = RegisterAck;
    type State = ();
    type Stream = tonic::Streaming<RegisterAck>;

    async fn open(&mut self) -> Result<Self::Stream, tonic::Status> {
        Ok(self.client.register(self.req.clone()).await?.into_inner())
    }

    fn snapshot(&mut self, ack: RegisterAck) -> Option<()> {
        tracing::debug!(admin = %ack.admin_addr, "registered with the control plane");
        Some(())
    }

    fn disconnected(&mut self, outcome: Result<(), &tonic::Status>, delay: Duration) {
        match outcome {
            Ok(()) => tracing::debug!(?delay, "registration stream ended; registering again"),
            Err(e) => tracing::debug!(code = ?e.code(), message = e.message(), ?delay, "registration failed; retrying"),
        }
    }
}
