//! The two API calls of a workload identity check: TokenReview, then GET
//! the pod the token is bound to.

use super::{Refusal, Workload, check_pod, is_token_shaped, workload_from_review};
use crate::rbac;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::PostParams;
use std::time::Duration;

/// How long one API call may take before the check fails as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks projected ServiceAccount tokens against the API server.
#[derive(Clone)]
pub struct WorkloadReviewer {
    client: Client,
    audience: String,
}

impl std::fmt::Debug for WorkloadReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadReviewer").field("audience", &self.audience).finish()
    }
}

impl WorkloadReviewer {
    /// Reviews tokens for `audience` (the mesh's) with `client`'s credentials
    /// (which need `create` on tokenreviews and `get` on pods: [`rbac::CONTROL_PLANE`]).
    pub fn new(client: Client, audience: impl Into<String>) -> Self {
        Self { client, audience: audience.into() }
    }

    /// The audience tokens must be minted for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The workload `token` proves, or why it proves none.
    pub async fn review(&self, token: &str) -> Result<Workload, Refusal> {
        if !is_token_shaped(token) {
            return Err(Refusal::Malformed);
        }
        let request = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let reviews = rbac::TOKEN_REVIEWS.all::<TokenReview>(&self.client);
        let reviewed = call("TokenReview", reviews.create(&PostParams::default(), &request)).await?;
        let workload = workload_from_review(&reviewed.status.unwrap_or_default(), &self.audience)?;
        let pods = rbac::PODS.namespaced::<Pod>(&self.client, &workload.namespace);
        let pod = call("reading the token's pod", pods.get_opt(&workload.pod_name)).await?;
        check_pod(&workload, pod.as_ref())?;
        Ok(workload)
    }
}

/// One API call, bounded by [`CALL_TIMEOUT`]; failures are `Unavailable`.
async fn call<T>(what: &str, f: impl Future<Output = Result<T, kube::Error>>) -> Result<T, Refusal> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(status))) if status.code == 403 => Err(Refusal::Unavailable(format!(
            "{what}: forbidden ({}); the control plane's ClusterRole must allow it (deploy/rbac/)",
            status.message
        ))),
        Ok(Err(e)) => Err(Refusal::Unavailable(format!("{what}: {e}"))),
        Err(_) => Err(Refusal::Unavailable(format!("{what}: no answer within {CALL_TIMEOUT:?}"))),
    }
}
