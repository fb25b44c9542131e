//! The control plane's own certificate, for its gRPC API: issued by its own
//! issuer, renewed at half-life and whenever the issuer or bundle changes.

use super::authority::Authority;
use mesh_core::shutdown::Shutdown;
use mesh_identity::SpiffeId;
use mesh_identity::tls::{Credentials, PrivateKeyDer};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The control plane's namespace and service account.
pub const CONTROL_NAMESPACE: &str = "mesh-system";
/// The control plane's service account.
pub const CONTROL_SERVICE_ACCOUNT: &str = "mesh-control";
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

/// The control plane's SPIFFE ID in `trust_domain`.
pub fn control_identity(trust_domain: &str) -> Result<SpiffeId, mesh_identity::spiffe::InvalidSpiffeId> {
    SpiffeId::new(trust_domain, CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT)
}

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot issue the control plane's serving certificate: {0}")]
pub struct ServingError(String);

/// Issues the first serving certificate.
pub fn credentials(authority: &Authority) -> Result<Arc<Credentials>, ServingError> {
    let state = authority.current();
    let creds = Credentials::new(state.anchors.clone()).map_err(|e| ServingError(e.to_string()))?;
    issue(authority, &creds)?;
    Ok(creds)
}

fn issue(authority: &Authority, creds: &Credentials) -> Result<SystemTime, ServingError> {
    let state = authority.current();
    creds.set_bundle(state.anchors.clone()).map_err(|e| ServingError(e.to_string()))?;
    let id = control_identity(&state.trust_domain).map_err(|e| ServingError(e.to_string()))?;
    let dns = ["localhost".to_string(), "mesh-control".into(), format!("mesh-control.{CONTROL_NAMESPACE}.svc")];
    let (leaf, key) = state.issuer.issue_with_key(&id, &dns, SERVING_TTL).map_err(|e| ServingError(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    creds.set_leaf(leaf.chain, key).map_err(|e| ServingError(e.to_string()))?;
    Ok(leaf.not_after)
}

/// Keeps the serving certificate fresh until shutdown.
pub async fn run(authority: Authority, creds: Arc<Credentials>, mut shutdown: Shutdown) {
    let mut changes = authority.subscribe();
    let mut renew_at = SystemTime::now() + SERVING_TTL / 2;
    loop {
        let wait = renew_at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = changes.changed() => if r.is_err() { return },
            _ = shutdown.triggered() => return,
        }
        match issue(&authority, &creds) {
            Ok(not_after) => {
                let life = not_after.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
                renew_at = SystemTime::now() + life / 2;
            }
            Err(e) => {
                tracing::error!("{e}; retrying in 10s");
                renew_at = SystemTime::now() + Duration::from_secs(10);
            }
        }
    }
}
