//! Proofs of identity: what a workload shows to get a certificate.
//!
//! Universal mode uses join tokens minted by the control plane; Kubernetes
//! uses projected ServiceAccount tokens checked with TokenReview. Both sit
//! behind [`ProofVerifier`], so the Identity API does not care which.
//!
//! A proof gets a workload its FIRST certificate; renewals are
//! authenticated by the certificate itself (see `super::IdentityService`).
//! Join tokens are single-use: [`UsedTokens`] remembers the ids of tokens
//! already honoured until they expire.

use super::authority::Authority;
use futures_util::future::BoxFuture;
use mesh_identity::SpiffeId;
use mesh_identity::token::{AUDIENCE, TokenError, unix_now};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// A Kubernetes ServiceAccount token that proves no workload identity.
    #[error(transparent)]
    Workload(#[from] mesh_kube::identity::Refusal),
}

impl ProofError {
    /// Whether the proof could not be checked (retry later), rather than refused.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ProofError::Unavailable(_) | ProofError::Workload(mesh_kube::identity::Refusal::Unavailable(_)))
    }

    /// A short, stable reason for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ProofError::Token(t) => t.reason(),
            ProofError::Unavailable(_) => "verifier_unavailable",
            ProofError::Refused(_) => "token_refused",
            ProofError::Workload(r) => r.reason(),
        }
    }
}

/// What a verified proof allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The identity the proof allows (all it allows: the identity asked
    /// for must be exactly this one).
    pub identity: SpiffeId,
    /// For a single-use proof (a join token): its id and expiry (Unix
    /// seconds), until which it must not be honoured again.
    pub once: Option<(String, u64)>,
}

impl From<SpiffeId> for Proof {
    /// A proof that may be presented again (a projected ServiceAccount token).
    fn from(identity: SpiffeId) -> Self {
        Self { identity, once: None }
    }
}

/// Checks a proof and says which identity it allows.
pub trait ProofVerifier: Send + Sync + std::fmt::Debug + 'static {
    /// What `token` proves, in `trust_domain`.
    fn verify<'a>(&'a self, token: &'a str, trust_domain: &'a str) -> BoxFuture<'a, Result<Proof, ProofError>>;
}

/// Ids of single-use proofs already honoured, each kept until its expiry.
///
/// In memory only: after a control-plane restart a token honoured before it
/// (and not yet expired) would be honoured once more. Tokens live minutes by
/// default, which bounds that window (ARCHITECTURE.md, "Join tokens").
#[derive(Debug, Clone, Default)]
pub struct UsedTokens {
    used: Arc<Mutex<HashMap<String, u64>>>,
}

impl UsedTokens {
    /// Marks `id` (valid until `exp`) as used; false when it already was.
    /// Forgets expired ids on the way.
    pub fn claim(&self, id: &str, exp: u64, now: u64) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, e| *e > now);
        if used.contains_key(id) {
            return false;
        }
        used.insert(id.to_string(), exp);
        true
    }

    /// Gives `id` back (the request it was claimed for failed before a
    /// certificate was issued), so the workload may retry with it.
    pub fn release(&self, id: &str) {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    fn verify<'a>(&'a self, token: &'a str, _trust_domain: &'a str) -> BoxFuture<'a, Result<Proof, ProofError>> {
        Box::pin(async move {
            let state = self.authority.current();
            let claims = state.token_key.verify(token, AUDIENCE, unix_now())?;
            let identity = claims.sub.parse::<SpiffeId>().map_err(|e| ProofError::Refused(e.to_string()))?;
            Ok(Proof { identity, once: Some((claims.jti, claims.exp)) })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::UsedTokens;

    #[test]
    fn a_token_id_is_honoured_once_until_it_expires() {
        let used = UsedTokens::default();
        assert!(used.claim("a", 100, 10));
        assert!(!used.claim("a", 100, 50), "replayed before expiry");
        assert!(used.claim("b", 100, 50));
        used.release("b");
        assert!(used.claim("b", 100, 60), "released after a failed request: usable again");
        // Past their expiry ids are forgotten (the token itself is refused as expired by then).
        assert!(used.claim("c", 300, 200));
        assert_eq!(used.len(), 1);
    }
}
