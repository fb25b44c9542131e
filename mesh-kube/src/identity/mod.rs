//! Workload identity on Kubernetes: a proxy presents its pod's projected
//! ServiceAccount token; the API server reviews it (TokenReview, with the
//! mesh's audience), and the token must be bound to a pod that is live now
//! (its UID unchanged, not terminating, not finished). What it proves is the
//! pod's namespace and ServiceAccount, nothing the proxy merely asks for.
//!
//! The decision is two pure functions ([`workload_from_review`],
//! [`check_pod`]); [`WorkloadReviewer`] does the two API calls around them.

mod review;

pub use review::WorkloadReviewer;

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::api::core::v1::Pod;

/// The audience projected tokens are minted for unless configured otherwise
/// (the injector's projected volume and the control plane's `--token-audience`).
pub const DEFAULT_AUDIENCE: &str = "mesh";

/// The `extra` key naming the pod a token is bound to.
pub const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The `extra` key with the UID of the pod a token is bound to.
pub const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// What a reviewed token proves: a pod and the ServiceAccount it runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The pod's (and ServiceAccount's) namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub service_account: String,
    /// The pod the token is bound to.
    pub pod_name: String,
    /// Its UID when the token was minted.
    pub pod_uid: String,
}

/// Why a token proves no workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The API server did not authenticate the token (expired, forged...).
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
    /// A token for another audience.
    #[error(
        "the token is not for the mesh's audience {want:?} ({detail}); mint it for that audience (the projected \
         volume's `audience`) or set the control plane's --token-audience"
    )]
    WrongAudience {
        /// The mesh's audience.
        want: String,
        /// What the API server said, or the audiences the token has.
        detail: String,
    },
    /// The pod or ServiceAccount the token was bound to was deleted (or recreated).
    #[error(
        "the API server invalidated the token: the pod or ServiceAccount it is bound to was deleted or recreated \
         ({0}); a new pod gets a new token"
    )]
    Invalidated(String),
    /// Not a ServiceAccount's token.
    #[error("{0:?} is not a ServiceAccount: only a pod's ServiceAccount token proves a workload identity")]
    NotServiceAccount(String),
    /// A ServiceAccount token bound to no pod (a TokenRequest without a pod, a Secret token).
    #[error(
        "the token of ServiceAccount {0} is not bound to a pod: present the pod's projected ServiceAccount token \
         (a projected volume with the mesh's audience), not a plain or Secret-based token"
    )]
    NotPodBound(String),
    /// The bound pod no longer exists (or is another pod of the same name).
    #[error("pod {0} the token is bound to no longer exists{1}")]
    PodGone(String, &'static str),
    /// The bound pod is being deleted.
    #[error("pod {0} the token is bound to is terminating")]
    PodTerminating(String),
    /// The bound pod has finished.
    #[error("pod {0} the token is bound to has finished ({1})")]
    PodFinished(String, String),
    /// The pod runs as another ServiceAccount than the token's.
    #[error("pod {pod} runs as ServiceAccount {runs_as:?}, not the token's {token:?}")]
    AccountMismatch {
        /// namespace/name.
        pod: String,
        /// The pod's ServiceAccount.
        runs_as: String,
        /// The token's.
        token: String,
    },
    /// Not shaped like a ServiceAccount token: refused without asking the API server.
    #[error(
        "not a Kubernetes ServiceAccount token (a JSON Web Token of three base64url parts, at most {MAX_TOKEN} \
         bytes): give the proxy the content of the pod's projected token file"
    )]
    Malformed,
    /// The API server could not be asked (unreachable, forbidden, timed out).
    #[error("cannot verify the token with the Kubernetes API: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// A short, stable reason for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAuthenticated(_) => "not_authenticated",
            Refusal::WrongAudience { .. } => "wrong_audience",
            Refusal::Invalidated(_) => "token_invalidated",
            Refusal::NotServiceAccount(_) => "not_service_account",
            Refusal::NotPodBound(_) => "not_pod_bound",
            Refusal::PodGone(..) => "pod_gone",
            Refusal::PodTerminating(_) => "pod_terminating",
            Refusal::PodFinished(..) => "pod_finished",
            Refusal::AccountMismatch { .. } => "pod_account_mismatch",
            Refusal::Malformed => "malformed_token",
            Refusal::Unavailable(_) => "verifier_unavailable",
        }
    }
}

/// The largest token sent to the API server (projected tokens are about 1 KiB).
pub const MAX_TOKEN: usize = 16 * 1024;

/// Whether `token` is shaped like a ServiceAccount token (a compact JWS:
/// three non-empty base64url parts, at most [`MAX_TOKEN`] bytes). Anything
/// else is refused without a TokenReview, so garbage sent to the Identity
/// API costs the API server nothing.
pub fn is_token_shaped(token: &str) -> bool {
    let base64url = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let parts: Vec<&str> = token.split('.').collect();
    token.len() <= MAX_TOKEN && parts.len() == 3 && parts.iter().all(|p| base64url(p))
}

/// The workload a TokenReview's `status` proves for `audience`: an
/// authenticated ServiceAccount token for that audience, bound to a pod.
///
/// A refusal's reason comes from the API server's error when it gives one:
/// it checks audiences and bound objects itself before saying "not
/// authenticated" (the message is the only place it says which).
pub fn workload_from_review(status: &TokenReviewStatus, audience: &str) -> Result<Workload, Refusal> {
    if status.authenticated != Some(true) {
        let error = status.error.clone().filter(|e| !e.is_empty()).unwrap_or_else(|| "no reason given".into());
        return Err(if error.contains("invalid for the target audiences") {
            Refusal::WrongAudience { want: audience.into(), detail: error }
        } else if error.contains("has been invalidated") || error.contains("does not match service account pod ref") {
            Refusal::Invalidated(error)
        } else {
            Refusal::NotAuthenticated(error)
        });
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(Refusal::WrongAudience { want: audience.into(), detail: format!("it is for {audiences:?}") });
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| Refusal::NotServiceAccount(username.clone()))?;
    let extra = user.extra.unwrap_or_default();
    let one = |key: &str| extra.get(key).and_then(|v| v.first()).filter(|v| !v.is_empty()).cloned();
    let (Some(pod_name), Some(pod_uid)) = (one(POD_NAME), one(POD_UID)) else {
        return Err(Refusal::NotPodBound(format!("{namespace}/{service_account}")));
    };
    Ok(Workload { namespace: namespace.into(), service_account: service_account.into(), pod_name, pod_uid })
}

/// Whether `pod` (the object named by the token, `None` when not found) is
/// the live pod the token was minted for, running as the token's ServiceAccount.
pub fn check_pod(workload: &Workload, pod: Option<&Pod>) -> Result<(), Refusal> {
    let name = format!("{}/{}", workload.namespace, workload.pod_name);
    let Some(pod) = pod else { return Err(Refusal::PodGone(name, "")) };
    if pod.metadata.uid.as_deref() != Some(workload.pod_uid.as_str()) {
        return Err(Refusal::PodGone(name, " (a pod of the same name was created since: it has another UID)"));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(Refusal::PodTerminating(name));
    }
    if let Some(phase @ ("Succeeded" | "Failed")) = pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        return Err(Refusal::PodFinished(name, phase.into()));
    }
    let runs_as = pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()).unwrap_or("default");
    if runs_as != workload.service_account {
        return Err(Refusal::AccountMismatch {
            pod: name,
            runs_as: runs_as.into(),
            token: workload.service_account.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
