//! Proofs of identity: what a workload shows to get a certificate.
//!
//! Universal mode uses join tokens minted by the control plane; Kubernetes
//! uses projected ServiceAccount tokens checked with TokenReview. Both sit
//! behind [`ProofVerifier`], so the Identity API does not care which.

use super::authority::Authority;
use futures_util::future::BoxFuture;
use mesh_identity::SpiffeId;
use mesh_identity::token::{AUDIENCE, TokenError, unix_now};

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// A join token that does not verify.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A token the verifier could not check (API server unreachable...).
    #[error("cannot verify the token: {0}")]
    Unavailable(String),
    /// A token the verifier checked and refused.
    #[error("token refused: {0}")]
    Refused(String),
    /// A token for another audience.
    #[error("token audiences {got:?} do not include {want:?}")]
    WrongAudience {
        /// The token's audiences.
        got: Vec<String>,
        /// The mesh's audience.
        want: String,
    },
}

impl ProofError {
    /// A short, stable reason for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ProofError::Token(t) => t.reason(),
            ProofError::Unavailable(_) => "verifier_unavailable",
            ProofError::Refused(_) => "token_refused",
            ProofError::WrongAudience { .. } => "wrong_audience",
        }
    }
}

/// Checks a proof and says which identity it allows.
pub trait ProofVerifier: Send + Sync + std::fmt::Debug + 'static {
    /// The identity `token` proves, in `trust_domain`.
    fn verify<'a>(&'a self, token: &'a str, trust_domain: &'a str) -> BoxFuture<'a, Result<SpiffeId, ProofError>>;
}

/// Join tokens signed with the authority's token key.
#[derive(Debug, Clone)]
pub struct JoinTokens {
    authority: Authority,
}

impl JoinTokens {
    /// Verifies with `authority`'s current key.
    pub fn new(authority: Authority) -> Self {
        Self { authority }
    }
}

impl ProofVerifier for JoinTokens {
    fn verify<'a>(&'a self, token: &'a str, _trust_domain: &'a str) -> BoxFuture<'a, Result<SpiffeId, ProofError>> {
        Box::pin(async move {
            let state = self.authority.current();
            let claims = state.token_key.verify(token, AUDIENCE, unix_now())?;
            claims.sub.parse::<SpiffeId>().map_err(|e| ProofError::Refused(e.to_string()))
        })
    }
}
