//! Workload identity for the mesh.
//!
//! - [`spiffe`]: identities as SPIFFE IDs, `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
//! - [`token`]: join tokens, the proof a workload presents in universal mode.
//! - [`ca`]: trust anchors (roots), the issuer (intermediate) and leaf signing.
//! - [`pem`]: reading certificates and keys, and what a certificate says.
//! - [`tls`]: rustls configurations for proxy-to-proxy mTLS whose
//!   certificate and trust bundle change live (renewal, anchor rotation).
//!
//! One crypto provider for the whole mesh: aws-lc-rs, which also gives the
//! hybrid post-quantum key exchange X25519MLKEM768, preferred by default.

pub mod ca;
pub mod dir;
pub mod pem;
pub mod spiffe;
pub mod tls;
pub mod token;

pub use spiffe::SpiffeId;

/// The crypto provider every TLS configuration and signature in the mesh uses.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
