//! Opaque TCP forwarding: one endpoint per connection (balanced on open
//! connections and connect latency), bytes copied both ways until either
//! side closes or the connection idles out.

use crate::balance::Balancer;
use crate::http::errors::ProxyError;
use crate::io::Activity;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

/// TCP forwarding limits.
#[derive(Debug, Clone, Copy)]
pub struct TcpSettings {
    /// How long to wait for a live endpoint.
    pub failfast: Duration,
    /// Endpoints to try when connecting fails.
    pub connect_attempts: usize,
    /// Close a connection when no byte has moved for this long.
    pub idle_timeout: Duration,
}

impl Default for TcpSettings {
    fn default() -> Self {
        Self { failfast: Duration::from_secs(3), connect_attempts: 3, idle_timeout: Duration::from_secs(3600) }
    }
}

/// Forwards `io` to an endpoint of `balancer`.
pub async fn forward<I>(
    mut io: I,
    balancer: &Arc<Balancer>,
    settings: TcpSettings,
    activity: Arc<Activity>,
) -> Result<(), ProxyError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let list = balancer.ready(settings.failfast).await?;
    let target = balancer.target();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last = ProxyError::NoEndpoints(target.to_string());
    for _ in 0..settings.connect_attempts.max(1) {
        let Some(ep) = list.pick_excluding(&tried) else { break };
        tried.push(ep.meta.addr);
        let _open = ep.load.start();
        let start = Instant::now();
        let mut upstream = match ep.client.connect_raw().await {
            Ok(s) => s,
            Err(e) => {
                ep.load.penalize(Instant::now());
                last = ProxyError::Connect { target: target.to_string(), reason: e.to_string() };
                continue;
            }
        };
        ep.load.observe(start.elapsed(), Instant::now());
        tokio::select! {
            res = tokio::io::copy_bidirectional(&mut io, &mut upstream) => {
                if let Err(e) = res {
                    tracing::debug!(endpoint = %ep.meta.addr, error = %e, "TCP connection ended with an error");
                }
            }
            _ = activity.idle(settings.idle_timeout) => {
                tracing::debug!(endpoint = %ep.meta.addr, "TCP connection idle; closing");
            }
        }
        return Ok(());
    }
    Err(last)
}
