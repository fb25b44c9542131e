//! The proxy's identity: a private key generated in memory (never written,
//! never logged), a first certificate from the control plane against the
//! join token, renewal at a fraction of its life authenticated by the
//! current certificate (mTLS, no token), and the trust bundle kept live.
//!
//! The token (a join token, or on Kubernetes the pod's projected
//! ServiceAccount token, re-read from its file at each attempt as the
//! kubelet rotates it) is presented only when
//! the proxy holds no valid certificate (at start, or after its certificate
//! expired while the control plane was away). Renewals go over a connection
//! of their own, opened with the current certificate as the client
//! certificate (the shared channel may have been opened before the proxy had
//! one).
//!
//! When the control plane is unreachable the current certificate stays in
//! use until it expires while renewal retries with backoff.
//!
//! The trust bundle is a stream followed with [`mesh_client::Watch`] like
//! every other. Renewal is not: it is one unary `Certify` call per
//! certificate, scheduled by the certificate's own lifetime (a fraction of
//! it), with retries capped by the time left before expiry, so it keeps its
//! own loop over the shared [`Backoff`].

use crate::config::IdentityConfig;
use mesh_client::watch::{Source, Watch};
use mesh_core::backoff::Backoff;
use mesh_core::shutdown::Shutdown;
use mesh_identity::SpiffeId;
use mesh_identity::tls::{CertificateDer, Credentials, PrivateKeyDer};
use mesh_proto::identity::{CertifyRequest, TrustBundleRequest, identity_client::IdentityClient};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

/// Why identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The trust anchors do not parse.
    #[error("invalid trust anchors: {0}")]
    Anchors(String),
    /// The token cannot be read.
    #[error("cannot read the identity token: {0}")]
    Token(String),
    /// The identity is not a SPIFFE ID.
    #[error(transparent)]
    Id(#[from] mesh_identity::spiffe::InvalidSpiffeId),
}

/// Identity metrics.
#[derive(Debug, Clone, Default)]
pub struct IdentityMetrics {
    expiry: Gauge<f64, AtomicU64>,
    refreshes: Family<Vec<(String, String)>, Counter>,
    anchors: Gauge,
}

impl IdentityMetrics {
    /// Registers `identity_*` metrics.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's current certificate expires (Unix seconds)",
            self.expiry.clone(),
        );
        reg.register("identity_cert_refresh", "Certificate requests by result", self.refreshes.clone());
        reg.register("identity_trust_anchors", "Trust anchors in the bundle in force", self.anchors.clone());
    }

    fn refresh(&self, result: &str) {
        self.refreshes.get_or_create(&vec![("result".into(), result.into())]).inc();
    }
}

/// Who this proxy is and whom it trusts.
#[derive(Debug, Clone)]
pub struct Identity {
    /// This workload's identity.
    pub id: SpiffeId,
    /// The control plane's identity.
    pub control_plane: String,
    /// The live credentials.
    pub creds: Arc<Credentials>,
}

impl Identity {
    /// Reads the anchors and learns the identities (from the token's claims
    /// unless configured).
    pub fn prepare(cfg: &IdentityConfig) -> Result<Self, IdentityError> {
        let anchors =
            mesh_identity::pem::certs(&cfg.trust_anchors_pem).map_err(|e| IdentityError::Anchors(e.to_string()))?;
        let creds = Credentials::new(anchors).map_err(|e| IdentityError::Anchors(e.to_string()))?;
        let id: SpiffeId = match &cfg.identity {
            Some(id) => id.parse()?,
            None => {
                let token = cfg.token.read().map_err(|e| IdentityError::Token(e.to_string()))?;
                let claims = mesh_identity::token::peek(&token).map_err(|e| {
                    IdentityError::Token(format!(
                        "{e}; give the identity explicitly with --identity when the token is not a join token"
                    ))
                })?;
                claims.sub.parse()?
            }
        };
        let control_plane = match &cfg.control_plane_identity {
            Some(c) => c.clone(),
            None => format!("spiffe://{}/ns/mesh-system/sa/mesh-control", id.trust_domain()),
        };
        Ok(Self { id, control_plane, creds })
    }
}

/// Keeps a certificate and the trust bundle current until shutdown.
/// `channel` is the shared channel to the control plane at `addr`.
pub async fn run(
    identity: Identity,
    channel: Channel,
    addr: String,
    cfg: IdentityConfig,
    metrics: IdentityMetrics,
    shutdown: Shutdown,
) {
    let bundle =
        watch_bundle(identity.creds.clone(), IdentityClient::new(channel.clone()), metrics.clone(), shutdown.clone());
    let certs = renew(identity, IdentityClient::new(channel), addr, cfg, metrics, shutdown);
    tokio::join!(bundle, certs);
}

async fn renew(
    identity: Identity,
    mut client: IdentityClient<Channel>,
    addr: String,
    cfg: IdentityConfig,
    metrics: IdentityMetrics,
    mut shutdown: Shutdown,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let wait = match certify(&identity, &mut client, &addr, &cfg).await {
            Ok(not_after) => {
                metrics.refresh("ok");
                metrics.expiry.set(not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0));
                backoff.reset();
                let life = not_after.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
                tracing::info!(identity = %identity.id, expires_in = ?life, "certificate installed");
                life.mul_f64(cfg.renew_at.clamp(0.1, 0.95))
            }
            Err(e) => {
                metrics.refresh("error");
                let remaining =
                    identity.creds.leaf_info().and_then(|i| i.not_after.duration_since(SystemTime::now()).ok());
                // Near expiry, retry more often than the backoff would.
                let mut delay = backoff.next_delay();
                if let Some(r) = remaining {
                    delay = delay.min(r / 4).max(Duration::from_millis(100));
                }
                match &e {
                    Failure::TokenRefused(why) => {
                        tracing::error!(identity = %identity.id, reason = %why, retry_in = ?delay,
                        "the control plane refused the identity token. A join token gets only the first \
                         certificate and is accepted once, for minutes: write a fresh one (`meshctl identity token \
                         ... --output FILE`) to the token file, read again at the next attempt. A Kubernetes \
                         ServiceAccount token must be the pod's projected token for the mesh's audience, and \
                         --identity must name the pod's namespace and ServiceAccount")
                    }
                    Failure::RenewalRefused(why) => {
                        tracing::error!(identity = %identity.id, reason = %why, retry_in = ?delay,
                        current_cert_valid_for = ?remaining,
                        "the control plane refused to renew with the current certificate; keeping it until it \
                         expires, then the proxy needs a fresh join token")
                    }
                    Failure::Other(why) => tracing::warn!(identity = %identity.id, error = %why, retry_in = ?delay,
                        current_cert_valid_for = ?remaining,
                        "certificate request failed; keeping the current certificate"),
                }
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.triggered() => return,
        }
    }
}

/// Why a certificate request failed.
#[derive(Debug)]
enum Failure {
    /// The join token was refused (expired, already used, forged...).
    TokenRefused(String),
    /// A renewal with the current certificate was refused.
    RenewalRefused(String),
    /// Anything else (unreachable, timed out, a bad answer): retried.
    Other(String),
}

async fn certify(
    identity: &Identity,
    client: &mut IdentityClient<Channel>,
    addr: &str,
    cfg: &IdentityConfig,
) -> Result<SystemTime, Failure> {
    // Renew with the certificate while it is valid (if it runs out during
    // the handshake, that attempt fails and the next one uses the token).
    let renewal = identity.creds.has_valid_leaf();
    let token = if renewal {
        String::new()
    } else {
        if identity.creds.leaf_info().is_some() {
            tracing::warn!(identity = %identity.id,
                "the certificate expired before it could be renewed; asking again with the join token \
                 (it must be a fresh, unused one)");
        }
        cfg.token.read().map_err(|e| Failure::Other(format!("cannot read the token: {e}")))?
    };
    let (key, csr) = mesh_identity::ca::generate_csr(&identity.id).map_err(|e| Failure::Other(e.to_string()))?;
    let req = CertifyRequest { identity: identity.id.to_string(), csr, token };
    // A renewal opens a connection of its own, so that its handshake
    // presents the current certificate (dropped, and closed, after the call).
    let mut own;
    let client = if renewal {
        let channel = mesh_client::channel(addr, Some((identity.creds.clone(), identity.control_plane.clone())))
            .map_err(|e| Failure::Other(e.to_string()))?;
        own = IdentityClient::new(channel);
        &mut own
    } else {
        client
    };
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.certify(req))
        .await
        .map_err(|_| Failure::Other("the control plane did not answer within 10s".to_string()))?
        .map_err(|s| {
            let why = format!("{:?}: {}", s.code(), s.message());
            match (s.code(), renewal) {
                (tonic::Code::Unauthenticated | tonic::Code::PermissionDenied, false) => Failure::TokenRefused(why),
                (tonic::Code::Unauthenticated | tonic::Code::PermissionDenied, true) => Failure::RenewalRefused(why),
                _ => Failure::Other(why),
            }
        })?
        .into_inner();
    let mut chain = vec![CertificateDer::from(rsp.leaf)];
    chain.extend(rsp.intermediates.into_iter().map(CertificateDer::from));
    if let Some(b) = rsp.bundle {
        let anchors: Vec<CertificateDer<'static>> = b.anchors.into_iter().map(CertificateDer::from).collect();
        identity.creds.set_bundle(anchors).map_err(|e| Failure::Other(e.to_string()))?;
    }
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    identity.creds.set_leaf(chain, key).map_err(|e| Failure::Other(e.to_string()))?;
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(rsp.valid_until).unwrap_or(0)))
}

/// The trust bundle stream: every message is the whole bundle, installed in
/// the live credentials; the state is the number of anchors in force.
struct TrustBundle {
    client: IdentityClient<Channel>,
    creds: Arc<Credentials>,
    metrics: IdentityMetrics,
}

impl Source for TrustBundle {
    type Item = mesh_proto::identity::TrustBundle;
    type State = usize;
    type Stream = tonic::Streaming<mesh_proto::identity::TrustBundle>;

    async fn open(&mut self) -> Result<Self::Stream, tonic::Status> {
        Ok(self.client.watch_trust_bundle(TrustBundleRequest {}).await?.into_inner())
    }

    fn snapshot(&mut self, b: mesh_proto::identity::TrustBundle) -> Option<usize> {
        let anchors: Vec<CertificateDer<'static>> = b.anchors.into_iter().map(CertificateDer::from).collect();
        let n = anchors.len();
        match self.creds.set_bundle(anchors) {
            Ok(()) => {
                self.metrics.anchors.set(n as i64);
                tracing::info!(anchors = n, "trust bundle updated");
                Some(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "trust bundle refused; keeping the current one");
                None
            }
        }
    }

    fn disconnected(&mut self, outcome: Result<(), &tonic::Status>, delay: Duration) {
        if let Err(e) = outcome {
            tracing::debug!(code = ?e.code(), message = e.message(), ?delay, "trust bundle watch failed; retrying");
        }
    }
}

/// Keeps the trust bundle current until shutdown.
async fn watch_bundle(
    creds: Arc<Credentials>,
    client: IdentityClient<Channel>,
    metrics: IdentityMetrics,
    mut shutdown: Shutdown,
) {
    let initial = creds.bundle().anchors.len();
    Watch::new(TrustBundle { client, creds, metrics }, initial)
        .with_backoff(Backoff::new(Duration::from_millis(200), Duration::from_secs(10)))
        .run_until(async move { shutdown.triggered().await })
        .await;
}
