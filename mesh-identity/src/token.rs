//! Join tokens: the proof a workload presents to get a certificate in
//! universal mode.
//!
//! A token names exactly one identity, an audience and an expiry, and is
//! signed with the control plane's token key (HMAC-SHA256, 256-bit key):
//! `mesh1.<base64url(JSON claims)>.<base64url(MAC)>`. Only holders of the
//! key (the control plane, and `meshctl` with access to its identity
//! directory) can mint one; anyone can read its claims, which lets a proxy
//! learn its identity from its token alone.
//!
//! A token bootstraps a workload's FIRST certificate only (renewals are
//! authenticated by the current certificate), so it lives minutes, not
//! days, and carries a unique id (`jti`) the control plane uses to accept it
//! once.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The audience of tokens for the mesh's identity service.
pub const AUDIENCE: &str = "mesh-identity";
const PREFIX: &str = "mesh1";

/// Whether `token` has a join token's form (`mesh1.`...), as opposed to
/// another proof (a Kubernetes ServiceAccount token); says nothing of its validity.
pub fn is_join_token(token: &str) -> bool {
    token.strip_prefix(PREFIX).is_some_and(|rest| rest.starts_with('.'))
}

/// What a token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The identity (SPIFFE ID) the bearer may obtain a certificate for.
    pub sub: String,
    /// Who the token is for.
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// A unique id: the control plane accepts each token once. Tokens
    /// minted before ids existed have none and are refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
}

impl Claims {
    /// Claims for `identity`, valid for `ttl` from now, with a fresh id.
    pub fn new(identity: &str, ttl: Duration) -> Self {
        let now = unix_now();
        Self {
            sub: identity.to_string(),
            aud: AUDIENCE.to_string(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            jti: new_id(),
        }
    }
}

/// 128 random bits in base64url; uniqueness is all that matters (the id is
/// not a secret), so a failed RNG falls back to the clock and a counter.
fn new_id() -> String {
    let mut raw = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut raw).is_err() {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0) as u64;
        raw[..8].copy_from_slice(&nanos.to_le_bytes());
        raw[8..].copy_from_slice(&N.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    }
    B64.encode(raw)
}

/// The default lifetime of a join token: long enough to start a workload,
/// short enough that a leaked one is soon worthless (it is single-use too).
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token at all.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not match: forged, or minted with another key.
    #[error("token signature is invalid (forged, or minted by another control plane)")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired at {exp} (now {now}); mint a new one with `meshctl identity token`")]
    Expired {
        /// Expiry, Unix seconds.
        exp: u64,
        /// Now, Unix seconds.
        now: u64,
    },
    /// Issued for another audience.
    #[error("token is for audience {got:?}, not {want:?}")]
    WrongAudience {
        /// The token's audience.
        got: String,
        /// The expected audience.
        want: String,
    },
}

impl TokenError {
    /// A short, stable reason for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed_token",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired { .. } => "expired_token",
            TokenError::WrongAudience { .. } => "wrong_audience",
        }
    }
}

/// The key tokens are signed with.
pub struct TokenKey(hmac::Key, [u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// The system random number generator failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RngFailed;

/// A token key file that does not hold a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token key: expected 32 bytes in base64url (as written by `meshctl identity init`)")]
pub struct InvalidKey;

impl TokenKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, RngFailed> {
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| RngFailed)?;
        Ok(Self::from_raw(raw))
    }

    fn from_raw(raw: [u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, &raw), raw)
    }

    /// The key as text, for its file.
    pub fn encode(&self) -> String {
        B64.encode(self.1)
    }

    /// Reads a key written by [`TokenKey::encode`].
    pub fn decode(text: &str) -> Result<Self, InvalidKey> {
        let bytes = B64.decode(text.trim()).map_err(|_| InvalidKey)?;
        let raw: [u8; 32] = bytes.try_into().map_err(|_| InvalidKey)?;
        Ok(Self::from_raw(raw))
    }

    /// Signs `claims` into a token.
    pub fn mint(&self, claims: &Claims) -> String {
        // Serializing a struct of strings and integers cannot fail.
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("{PREFIX}.{payload}");
        let tag = hmac::sign(&self.0, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }

    /// Checks a token's signature, audience and expiry; returns its claims.
    pub fn verify(&self, token: &str, audience: &str, now: u64) -> Result<Claims, TokenError> {
        let (signed, tag) = token.trim().rsplit_once('.').ok_or(TokenError::Malformed("no signature"))?;
        let tag = B64.decode(tag).map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let claims = peek(token)?;
        hmac::verify(&self.0, signed.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
        if claims.aud != audience {
            return Err(TokenError::WrongAudience { got: claims.aud, want: audience.to_string() });
        }
        if now >= claims.exp {
            return Err(TokenError::Expired { exp: claims.exp, now });
        }
        if claims.jti.is_empty() {
            return Err(TokenError::Malformed(
                "no token id (jti): minted by an older meshctl; mint a new one with `meshctl identity token`",
            ));
        }
        Ok(claims)
    }
}

/// Reads a token's claims without checking its signature.
pub fn peek(token: &str) -> Result<Claims, TokenError> {
    let mut parts = token.trim().split('.');
    if parts.next() != Some(PREFIX) {
        return Err(TokenError::Malformed("not a mesh join token (expected it to start with \"mesh1.\")"));
    }
    let payload = parts.next().ok_or(TokenError::Malformed("no claims"))?;
    if parts.next().is_none() || parts.next().is_some() {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    }
    let json = B64.decode(payload).map_err(|_| TokenError::Malformed("claims are not base64url"))?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("claims are not the expected JSON"))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "spiffe://mesh.local/ns/default/sa/books";

    #[test]
    fn mint_then_verify() {
        let key = TokenKey::generate().expect("rng");
        let t = key.mint(&Claims::new(ID, Duration::from_secs(60)));
        let c = key.verify(&t, AUDIENCE, unix_now()).expect("valid");
        assert_eq!(c.sub, ID);
        assert_eq!(peek(&t).expect("readable").sub, ID);
        let again = TokenKey::decode(&key.encode()).expect("round trip");
        assert!(again.verify(&t, AUDIENCE, unix_now()).is_ok());
    }

    #[test]
    fn refuses_forged_expired_and_foreign_tokens() {
        let key = TokenKey::generate().expect("rng");
        let t = key.mint(&Claims::new(ID, Duration::from_secs(60)));
        let other = TokenKey::generate().expect("rng");
        assert_eq!(other.verify(&t, AUDIENCE, unix_now()), Err(TokenError::BadSignature));

        // Tampered claims keep the old signature: refused.
        let mut c = peek(&t).expect("claims");
        c.sub = "spiffe://mesh.local/ns/default/sa/admin".into();
        let forged = format!(
            "mesh1.{}.{}",
            B64.encode(serde_json::to_vec(&c).expect("json")),
            t.rsplit('.').next().expect("sig")
        );
        assert_eq!(key.verify(&forged, AUDIENCE, unix_now()), Err(TokenError::BadSignature));

        // Every token has its own id, even two minted in the same second.
        let again = key.mint(&Claims::new(ID, Duration::from_secs(60)));
        let (a, b) = (peek(&t).expect("claims").jti, peek(&again).expect("claims").jti);
        assert!(a.len() >= 20 && a != b, "{a} {b}");
        // A token without an id (an older meshctl) cannot be accepted once only: refused.
        let no_id = key.mint(&Claims { jti: String::new(), ..Claims::new(ID, Duration::from_secs(60)) });
        assert!(matches!(key.verify(&no_id, AUDIENCE, unix_now()), Err(TokenError::Malformed(_))));

        let expired = key.mint(&Claims { exp: 10, ..Claims::new(ID, Duration::ZERO) });
        assert!(matches!(key.verify(&expired, AUDIENCE, unix_now()), Err(TokenError::Expired { .. })));

        let wrong = key.mint(&Claims { aud: "kubernetes".into(), ..Claims::new(ID, Duration::from_secs(60)) });
        assert!(matches!(key.verify(&wrong, AUDIENCE, unix_now()), Err(TokenError::WrongAudience { .. })));

        for junk in ["", "abc", "mesh1.", "mesh1.!!.x", "mesh2.e30.AA", "mesh1.e30.AA.extra"] {
            assert!(matches!(key.verify(junk, AUDIENCE, unix_now()), Err(TokenError::Malformed(_))), "{junk}");
        }
        assert_eq!(TokenKey::decode("short").err(), Some(InvalidKey));
    }

    /// Catches a ServiceAccount token (or `mesh10.`...) taken for a join token.
    #[test]
    fn join_tokens_are_told_from_other_proofs_by_their_prefix() {
        assert!(is_join_token("mesh1.e30.AA"));
        for other in ["eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "mesh10.e30.AA", "mesh1", ""] {
            assert!(!is_join_token(other), "{other:?}");
        }
    }
}
