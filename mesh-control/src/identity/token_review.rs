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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::authority::{Authority, AuthorityMetrics};
    use mesh_identity::dir::IdentityDir;
    use std::time::Duration;

    /// Catches the two kinds of proof sent to the wrong verifier: a join
    /// token to the API server (refused there), or a ServiceAccount token to
    /// join-token verification (refused as malformed, the API server never asked).
    #[tokio::test]
    async fn join_tokens_and_service_account_tokens_each_go_to_their_verifier() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = IdentityDir::new(dir.path().join("identity"));
        identity.init("cluster.local", None).expect("an identity directory");
        let authority = Authority::load(identity.clone(), AuthorityMetrics::default()).expect("loads");
        // An API server nobody listens on: a ServiceAccount token that
        // reaches it fails as unavailable.
        let config = mesh_kube::api::kube::Config::new("https://127.0.0.1:1".parse().expect("url"));
        let client = mesh_kube::api::Client::try_from(config).expect("a client");
        let proofs = KubernetesProofs {
            join: JoinTokens::new(authority),
            service_accounts: ServiceAccountTokens::new(WorkloadReviewer::new(client, "mesh-identity")),
        };
        let join = identity.mint_token("shop", "books", Duration::from_secs(600)).expect("a join token");
        let proof = proofs.verify(&join, "cluster.local").await.expect("a join token verifies");
        assert_eq!(proof.identity.to_string(), "spiffe://cluster.local/ns/shop/sa/books");
        assert!(proof.once.is_some(), "join tokens stay single-use on Kubernetes");
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let e = proofs.verify(jwt, "cluster.local").await.expect_err("no API server");
        assert_eq!(e.reason(), "verifier_unavailable", "{e}");
        assert!(e.is_unavailable());
        let e = proofs.verify("garbage", "cluster.local").await.expect_err("malformed");
        assert_eq!(e.reason(), "malformed_token", "{e}");
    }
}
