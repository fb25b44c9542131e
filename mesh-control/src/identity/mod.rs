//! The Identity API: signs workload certificates against a proof, and
//! streams the trust bundle.
//!
//! `Certify` has two ways in:
//! - **bootstrap**: a proof in `token` (a join token, once; a projected
//!   ServiceAccount token) gets the identity the proof allows;
//! - **renewal**: no token, over a connection whose client certificate
//!   (verified by the gRPC port's TLS against the trust bundle, and not
//!   expired now) names the identity asked for.
//!
//! Neither: `UNAUTHENTICATED`. A certificate asking for another identity:
//! `PERMISSION_DENIED`.

pub mod authority;
pub mod proof;
pub mod serving;
pub mod token_review;

use crate::tls::ConnInfo;
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
use proof::{ProofVerifier, UsedTokens};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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
    used: UsedTokens,
    shutdown: Shutdown,
}

/// How a request is authenticated.
enum Via {
    /// A proof (allowing the identity asked for); its id and expiry when single-use.
    Proof(Option<(String, u64)>),
    /// The client certificate of the connection (a renewal).
    Certificate,
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
        Self { authority, proofs, leaf_ttl, metrics, used: UsedTokens::default(), shutdown }
    }

    fn refuse(&self, reason: &'static str, status: Status, requested: &str) -> Status {
        tracing::warn!(identity = requested, reason, detail = status.message(), "certificate refused");
        self.metrics.refused(reason);
        status
    }

    /// Answers `req`, which came over a connection described by `conn`
    /// (none when the gRPC port is plaintext).
    async fn certify(&self, req: CertifyRequest, conn: Option<&ConnInfo>) -> Result<CertifyResponse, Status> {
        let state = self.authority.current();
        let requested: SpiffeId = req.identity.parse().map_err(|e: mesh_identity::spiffe::InvalidSpiffeId| {
            self.refuse("invalid_identity", Status::invalid_argument(e.to_string()), &req.identity)
        })?;
        if requested.trust_domain() != state.trust_domain {
            let msg = format!("identity {requested} is outside this mesh's trust domain {}", state.trust_domain);
            return Err(self.refuse("foreign_trust_domain", Status::invalid_argument(msg), &req.identity));
        }
        let via = if !req.token.trim().is_empty() {
            let proof = self.proofs.verify(&req.token, &state.trust_domain).await.map_err(|e| {
                let status = if e.is_unavailable() {
                    Status::unavailable(e.to_string())
                } else {
                    Status::unauthenticated(e.to_string())
                };
                self.refuse(e.reason(), status, &req.identity)
            })?;
            if proof.identity != requested {
                let msg = format!(
                    "the proof allows {}, not {requested}: ask for the identity the token proves (on Kubernetes: \
                     the pod's namespace and ServiceAccount)",
                    proof.identity
                );
                return Err(self.refuse("identity_not_allowed", Status::permission_denied(msg), &req.identity));
            }
            Via::Proof(proof.once)
        } else {
            self.renewal(&requested, conn)?;
            Via::Certificate
        };
        // A single-use token is spent here, just before signing (so a
        // refusal above leaves it usable), and given back if signing fails.
        let once = match &via {
            Via::Proof(Some((id, exp))) => {
                if !self.used.claim(id, *exp, mesh_identity::token::unix_now()) {
                    let msg = "this join token was already used: a token gets one workload its first \
                               certificate, once; mint a new one with `meshctl identity token`";
                    return Err(self.refuse("token_replayed", Status::unauthenticated(msg), &req.identity));
                }
                Some(id.clone())
            }
            _ => None,
        };
        let signed = state.issuer.sign_csr(&req.csr, &requested, self.leaf_ttl);
        if let (Err(_), Some(id)) = (&signed, &once) {
            self.used.release(id);
        }
        let leaf = signed.map_err(|e| match e {
            mesh_identity::ca::CsrError::Malformed(_) => {
                self.refuse("malformed_csr", Status::invalid_argument(e.to_string()), &req.identity)
            }
            mesh_identity::ca::CsrError::WrongIdentity { .. } => {
                self.refuse("csr_identity_mismatch", Status::permission_denied(e.to_string()), &req.identity)
            }
        })?;
        self.metrics.issued.inc();
        let valid_until = leaf.not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let via = match via {
            Via::Proof(_) => "proof",
            Via::Certificate => "renewal",
        };
        tracing::info!(identity = %requested, valid_until, via, "certificate issued");
        let mut chain = leaf.chain.into_iter().map(|c| c.to_vec());
        Ok(CertifyResponse {
            leaf: chain.next().unwrap_or_default(),
            intermediates: chain.collect(),
            valid_until,
            bundle: Some(bundle(&state)),
        })
    }
}

impl IdentityService {
    /// Checks a renewal: the connection's client certificate must name
    /// exactly `requested` and still be valid.
    fn renewal(&self, requested: &SpiffeId, conn: Option<&ConnInfo>) -> Result<(), Status> {
        let asked = requested.to_string();
        let Some((presented, not_after)) = conn.and_then(|c| Some((c.identity.as_deref()?, c.not_after))) else {
            let msg = "no proof: present a join token for the first certificate, then renew over mTLS \
                       with the current certificate (no token)";
            return Err(self.refuse("no_proof", Status::unauthenticated(msg), &asked));
        };
        if not_after.is_none_or(|t| t <= SystemTime::now()) {
            let msg = format!(
                "the client certificate for {presented} has expired: it cannot renew; start again with a new join token"
            );
            return Err(self.refuse("expired_client_certificate", Status::unauthenticated(msg), &asked));
        }
        if presented != asked {
            let msg = format!("a certificate for {presented} can renew only {presented}, not {requested}");
            return Err(self.refuse("renewal_identity_mismatch", Status::permission_denied(msg), &asked));
        }
        Ok(())
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
        let conn = request.extensions().get::<ConnInfo>().cloned();
        IdentityService::certify(self, request.into_inner(), conn.as_ref()).await.map(Response::new)
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
