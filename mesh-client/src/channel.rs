//! The connection to the control plane: one HTTP/2 channel shared by every
//! client of its APIs, secured with TLS (verifying the control plane's
//! identity against the live trust bundle) when the caller has an identity.

use hyper_util::rt::TokioIo;
use mesh_identity::tls::Credentials;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A lazily connecting channel to `addr` (`http://host:port`). With `tls`
/// (the live credentials and the control plane's expected SPIFFE ID) the
/// connection is mTLS-verified at each handshake, so trust-bundle rotations
/// apply to reconnects; an `https://` address is then dialled like `http://`.
pub fn channel(addr: &str, tls: Option<(Arc<Credentials>, String)>) -> Result<Channel, tonic::transport::Error> {
    // TLS is this module's job (with the mesh's own verification), so an
    // `https://` address is dialled like `http://` and secured below.
    let addr = match addr.strip_prefix("https://") {
        Some(rest) if tls.is_some() => format!("http://{rest}"),
        _ => addr.to_string(),
    };
    let endpoint = Endpoint::from_shared(addr)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let Some((creds, expected)) = tls else {
        return Ok(endpoint.connect_lazy());
    };
    let connector = tower::service_fn(move |uri: http::Uri| {
        let creds = creds.clone();
        let expected = expected.clone();
        async move {
            let host = uri.host().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(8086);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let config = creds.client_config(&expected, &[b"h2"]).map_err(std::io::Error::other)?;
            let name = mesh_identity::tls::server_name(&host)?;
            let tls = mesh_identity::tls::connect(config, name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
