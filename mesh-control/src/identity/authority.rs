//! The authority: the identity directory's material, loaded, checked and
//! reloaded live when an operator rotates the issuer or the anchors.

use mesh_core::shutdown::Shutdown;
use mesh_identity::ca::IssuerCa;
use mesh_identity::dir::{DirError, IdentityDir};
use mesh_identity::tls::CertificateDer;
use mesh_identity::token::TokenKey;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;

/// The material in force.
#[derive(Debug)]
pub struct State {
    /// The trust domain.
    pub trust_domain: String,
    /// The trust bundle.
    pub anchors: Vec<CertificateDer<'static>>,
    /// The issuer leaves are signed with.
    pub issuer: IssuerCa,
    /// The join-token key.
    pub token_key: TokenKey,
}

/// Authority metrics.
#[derive(Debug, Clone, Default)]
pub struct AuthorityMetrics {
    reloads: Family<Vec<(String, String)>, Counter>,
    issuer_expiry: Gauge<f64, AtomicU64>,
    anchors: Gauge,
}

impl AuthorityMetrics {
    /// Registers `identity_*` authority metrics.
    pub fn register(&self, reg: &mut Registry) {
        reg.register("identity_dir_reloads", "Identity directory loads by result", self.reloads.clone());
        reg.register(
            "identity_issuer_expiration_timestamp_seconds",
            "When the issuer certificate expires (Unix seconds)",
            self.issuer_expiry.clone(),
        );
        reg.register("identity_trust_anchors", "Trust anchors in the bundle", self.anchors.clone());
    }

    fn loaded(&self, s: &State, result: &str) {
        self.reloads.get_or_create(&vec![("result".into(), result.into())]).inc();
        let exp = s.issuer.not_after().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        self.issuer_expiry.set(exp);
        self.anchors.set(s.anchors.len() as i64);
    }
}

/// The live authority.
#[derive(Debug, Clone)]
pub struct Authority {
    dir: IdentityDir,
    tx: Arc<watch::Sender<Arc<State>>>,
    metrics: AuthorityMetrics,
}

impl Authority {
    /// Loads the directory; the control plane refuses to start on error.
    pub fn load(dir: IdentityDir, metrics: AuthorityMetrics) -> Result<Self, DirError> {
        let state = Arc::new(to_state(&dir)?);
        metrics.loaded(&state, "ok");
        let (tx, _) = watch::channel(state);
        Ok(Self { dir, tx: Arc::new(tx), metrics })
    }

    /// The material in force.
    pub fn current(&self) -> Arc<State> {
        self.tx.borrow().clone()
    }

    /// Notified on every accepted reload.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.tx.subscribe()
    }

    /// Watches the directory until shutdown; a change that does not load
    /// (a half-written rotation, a wrong key) is logged and the previous
    /// material stays in force.
    pub async fn run(self, poll: Duration, mut shutdown: Shutdown) {
        let mut seen = self.dir.fingerprint();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.triggered() => return,
            }
            let now = self.dir.fingerprint();
            if now == seen && !failing {
                continue;
            }
            seen = now;
            match to_state(&self.dir) {
                Ok(state) => {
                    failing = false;
                    self.metrics.loaded(&state, "ok");
                    tracing::info!(
                        dir = %self.dir.path().display(),
                        anchors = state.anchors.len(),
                        issuer_expires = ?state.issuer.not_after(),
                        "identity material reloaded"
                    );
                    self.tx.send_replace(Arc::new(state));
                }
                Err(e) => {
                    if !failing {
                        tracing::error!("identity material rejected, keeping the previous: {e}");
                        self.metrics.reloads.get_or_create(&vec![("result".into(), "error".into())]).inc();
                    }
                    failing = true;
                }
            }
        }
    }
}

fn to_state(dir: &IdentityDir) -> Result<State, DirError> {
    let m = dir.load()?;
    Ok(State { trust_domain: m.trust_domain, anchors: m.anchors, issuer: m.issuer, token_key: m.token_key })
}
