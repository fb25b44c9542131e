//! The Identity API: signs workload certificates against a proof, and
//! streams the trust bundle.

pub mod authority;
pub mod proof;
pub mod serving;
pub mod token_review;

use authority::Authority;
use futures_util::Stream;
use mesh_core::shutdown::Shutdown;
use mesh_identity::SpiffeId;
use mesh_proto::identity::{
    CertifyRequest, CertifyResponse, TrustBundle, TrustBundleRequest, identity_server::Identity,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use proof::{ProofError, ProofVerifier};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// Identity API metrics.
#[derive(Debug, Clone, Default)]
pub struct IdentityMetrics {
    issued: Counter,
    refused: Family<Vec<(String, String)>, Counter>,
}

impl IdentityMetrics {
    /// Registers `identity_certificates_issued_total` and `identity_certificates_refused_total`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register("identity_certificates_issued", "Leaf certificates issued", self.issued.clone());
        reg.register("identity_certificates_refused", "Certify requests refused, by reason", self.refused.clone());
    }

    fn refused(&self, reason: &str) {
        self.refused.get_or_create(&vec![("reason".into(), reason.into())]).inc();
    }
}

/// Serves [`Identity`].
#[derive(Debug, Clone)]
pub struct IdentityService {
    authority: Authority,
    proofs: Arc<dyn ProofVerifier>,
    leaf_ttl: Duration,
    metrics: IdentityMetrics,
    shutdown: Shutdown,
}

impl IdentityService {
    /// Signs leaves living `leaf_ttl`, for proofs `proofs` accepts.
    pub fn new(
        authority: Authority,
        proofs: Arc<dyn ProofVerifier>,
        leaf_ttl: Duration,
        metrics: IdentityMetrics,
        shutdown: Shutdown,
    ) -> Self {
        Self { authority, proofs, leaf_ttl, metrics, shutdown }
    }

    fn refuse(&self, reason: &'static str, status: Status, requested: &str) -> Status {
        tracing::warn!(identity = requested, reason, detail = status.message(), "certificate refused");
        self.metrics.refused(reason);
        status
    }

    async fn certify(&self, req: CertifyRequest) -> Result<CertifyResponse, Status> {
        let state = self.authority.current();
        let requested: SpiffeId = req.identity.parse().map_err(|e: mesh_identity::spiffe::InvalidSpiffeId| {
            self.refuse("invalid_identity", Status::invalid_argument(e.to_string()), &req.identity)
        })?;
        if requested.trust_domain() != state.trust_domain {
            let msg = format!("identity {requested} is outside this mesh's trust domain {}", state.trust_domain);
            return Err(self.refuse("foreign_trust_domain", Status::invalid_argument(msg), &req.identity));
        }
        let allowed = self.proofs.verify(&req.token, &state.trust_domain).await.map_err(|e| {
            let status = match &e {
                ProofError::Unavailable(_) => Status::unavailable(e.to_string()),
                _ => Status::unauthenticated(e.to_string()),
            };
            self.refuse(e.reason(), status, &req.identity)
        })?;
        if allowed != requested {
            let msg = format!("the proof allows {allowed}, not {requested}");
            return Err(self.refuse("identity_not_allowed", Status::permission_denied(msg), &req.identity));
        }
        let leaf = state.issuer.sign_csr(&req.csr, &requested, self.leaf_ttl).map_err(|e| match e {
            mesh_identity::ca::CsrError::Malformed(_) => {
                self.refuse("malformed_csr", Status::invalid_argument(e.to_string()), &req.identity)
            }
            mesh_identity::ca::CsrError::WrongIdentity { .. } => {
                self.refuse("csr_identity_mismatch", Status::permission_denied(e.to_string()), &req.identity)
            }
        })?;
        self.metrics.issued.inc();
        let valid_until = leaf.not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        tracing::info!(identity = %requested, valid_until, "certificate issued");
        let mut chain = leaf.chain.into_iter().map(|c| c.to_vec());
        Ok(CertifyResponse {
            leaf: chain.next().unwrap_or_default(),
            intermediates: chain.collect(),
            valid_until,
            bundle: Some(bundle(&state)),
        })
    }
}

fn bundle(state: &authority::State) -> TrustBundle {
    TrustBundle {
        anchors: state.anchors.iter().map(|a| a.to_vec()).collect(),
        trust_domain: state.trust_domain.clone(),
    }
}

/// The stream type of `WatchTrustBundle`.
pub type BundleStream = Pin<Box<dyn Stream<Item = Result<TrustBundle, Status>> + Send>>;

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(&self, request: Request<CertifyRequest>) -> Result<Response<CertifyResponse>, Status> {
        IdentityService::certify(self, request.into_inner()).await.map(Response::new)
    }

    type WatchTrustBundleStream = BundleStream;

    async fn watch_trust_bundle(
        &self,
        _request: Request<TrustBundleRequest>,
    ) -> Result<Response<Self::WatchTrustBundleStream>, Status> {
        let rx = self.authority.subscribe();
        let shutdown = self.shutdown.clone();
        let stream = futures_util::stream::unfold(
            (rx, shutdown, None::<TrustBundle>),
            |(mut rx, mut shutdown, last)| async move {
                loop {
                    if last.is_some() {
                        tokio::select! {
                            r = rx.changed() => if r.is_err() { return None },
                            _ = shutdown.triggered() => return None,
                        }
                    }
                    let b = bundle(&rx.borrow_and_update());
                    if last.as_ref() != Some(&b) {
                        return Some((Ok(b.clone()), (rx, shutdown, Some(b))));
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
