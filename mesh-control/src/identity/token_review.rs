//! Kubernetes proofs: a pod's projected ServiceAccount token, checked by
//! the API server (TokenReview with the mesh's audience) and bound to a
//! live pod ([`mesh_kube::identity`]). The mesh never validates Kubernetes
//! tokens itself.

use super::proof::{JoinTokens, Proof, ProofError, ProofVerifier};
use futures_util::future::BoxFuture;
use mesh_identity::SpiffeId;
use mesh_kube::identity::WorkloadReviewer;

/// Verifies projected ServiceAccount tokens: the identity is the bound
/// pod's namespace and ServiceAccount.
#[derive(Debug, Clone)]
pub struct ServiceAccountTokens {
    reviewer: WorkloadReviewer,
}

impl ServiceAccountTokens {
    /// Reviews with `reviewer` (its client and the mesh's audience).
    pub fn new(reviewer: WorkloadReviewer) -> Self {
        Self { reviewer }
    }
}

impl ProofVerifier for ServiceAccountTokens {
    fn verify<'a>(&'a self, token: &'a str, trust_domain: &'a str) -> BoxFuture<'a, Result<Proof, ProofError>> {
        // Not single-use: the kubelet re-presents the same projected token
        // until it rotates it, and it is bound to the pod.
        Box::pin(async move {
            let workload = self.reviewer.review(token).await?;
            let id = SpiffeId::new(trust_domain, &workload.namespace, &workload.service_account)
                .map_err(|e| ProofError::Refused(e.to_string()))?;
            tracing::debug!(identity = %id, pod = %workload.pod_name, "ServiceAccount token reviewed");
            Ok(Proof::from(id))
        })
    }
}

/// On Kubernetes: join tokens (`mesh1.`, for workloads outside the cluster)
/// and ServiceAccount tokens (anything else), each checked by its own verifier.
#[derive(Debug, Clone)]
pub struct KubernetesProofs {
    /// Join tokens.
    pub join: JoinTokens,
    /// ServiceAccount tokens.
    pub service_accounts: ServiceAccountTokens,
}

impl ProofVerifier for KubernetesProofs {
    fn verify<'a>(&'a self, token: &'a str, trust_domain: &'a str) -> BoxFuture<'a, Result<Proof, ProofError>> {
        if mesh_identity::token::is_join_token(token) {
            self.join.verify(token, trust_domain)
        } else {
            self.service_accounts.verify(token, trust_domain)
        }
    }
}
