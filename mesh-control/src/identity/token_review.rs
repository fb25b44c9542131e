//! Kubernetes proofs: projected ServiceAccount tokens, checked by asking the
//! API server (TokenReview, `authentication.k8s.io/v1`) with the mesh's
//! audience. The mesh never validates Kubernetes tokens itself.

use super::proof::{Proof, ProofError, ProofVerifier};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mesh_identity::SpiffeId;
use mesh_identity::tls::ClientConfig;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The TokenReview request body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReview<'a> {
    api_version: &'static str,
    kind: &'static str,
    spec: ReviewSpec<'a>,
}

#[derive(Debug, Serialize)]
struct ReviewSpec<'a> {
    token: &'a str,
    audiences: Vec<&'a str>,
}

/// The part of a TokenReview response the mesh reads.
#[derive(Debug, Deserialize)]
pub struct ReviewResponse {
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Debug, Default, Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: ReviewUser,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    error: String,
}

#[derive(Debug, Default, Deserialize)]
struct ReviewUser {
    #[serde(default)]
    username: String,
}

impl<'a> TokenReview<'a> {
    /// The request body asking the API server about `token` for `audience`.
    pub fn new(token: &'a str, audience: &'a str) -> Self {
        Self {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: ReviewSpec { token, audiences: vec![audience] },
        }
    }
}

/// The identity a TokenReview response grants, in `trust_domain`.
pub fn identity_from_review(body: &[u8], audience: &str, trust_domain: &str) -> Result<SpiffeId, ProofError> {
    let r: ReviewResponse = serde_json::from_slice(body)
        .map_err(|e| ProofError::Unavailable(format!("unreadable TokenReview response: {e}")))?;
    let s = r.status;
    if !s.authenticated {
        let why = if s.error.is_empty() { "not authenticated".to_string() } else { s.error };
        return Err(ProofError::Refused(why));
    }
    if !s.audiences.iter().any(|a| a == audience) {
        return Err(ProofError::WrongAudience { got: s.audiences, want: audience.to_string() });
    }
    let rest = s
        .user
        .username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(|| ProofError::Refused(format!("{:?} is not a ServiceAccount", s.user.username)))?;
    let (ns, sa) = rest
        .split_once(':')
        .ok_or_else(|| ProofError::Refused(format!("malformed ServiceAccount user {:?}", s.user.username)))?;
    SpiffeId::new(trust_domain, ns, sa).map_err(|e| ProofError::Refused(e.to_string()))
}

/// Verifies ServiceAccount tokens with the API server's TokenReview.
#[derive(Debug, Clone)]
pub struct TokenReviewer {
    host: String,
    port: u16,
    bearer: String,
    tls: Arc<ClientConfig>,
    audience: String,
}

impl TokenReviewer {
    /// A reviewer calling `https://host:port` with the control plane's own
    /// `bearer` token, trusting the cluster CA in `tls`.
    pub fn new(host: &str, port: u16, bearer: &str, tls: Arc<ClientConfig>, audience: &str) -> Self {
        Self { host: host.into(), port, bearer: bearer.trim().into(), tls, audience: audience.into() }
    }

    async fn review(&self, token: &str) -> Result<Vec<u8>, ProofError> {
        let unavailable =
            |e: &dyn std::fmt::Display| ProofError::Unavailable(format!("TokenReview at {}: {e}", self.host));
        let body = serde_json::to_vec(&TokenReview::new(token, &self.audience)).map_err(|e| unavailable(&e))?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|e| unavailable(&e))?
        .map_err(|e| unavailable(&e))?;
        let name = mesh_identity::tls::server_name(&self.host).map_err(|e| unavailable(&e))?;
        let tls = mesh_identity::tls::connect(self.tls.clone(), name, tcp).await.map_err(|e| unavailable(&e))?;
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| unavailable(&e))?;
        tokio::spawn(conn);
        let req = http::Request::post("/apis/authentication.k8s.io/v1/tokenreviews")
            .header(http::header::HOST, &self.host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.bearer))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unavailable(&e))?;
        let rsp = tokio::time::timeout(Duration::from_secs(5), tx.send_request(req))
            .await
            .map_err(|e| unavailable(&e))?
            .map_err(|e| unavailable(&e))?;
        let status = rsp.status();
        let bytes = rsp.into_body().collect().await.map_err(|e| unavailable(&e))?.to_bytes();
        if !status.is_success() {
            return Err(unavailable(&format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes))));
        }
        Ok(bytes.to_vec())
    }
}

impl ProofVerifier for TokenReviewer {
    fn verify<'a>(&'a self, token: &'a str, trust_domain: &'a str) -> BoxFuture<'a, Result<Proof, ProofError>> {
        // Projected tokens are re-presented as the kubelet rotates them: not single-use.
        Box::pin(async move {
            let body = self.review(token).await?;
            identity_from_review(&body, &self.audience, trust_domain).map(Proof::from)
        })
    }
}

#[cfg(test)]
mod tests;
