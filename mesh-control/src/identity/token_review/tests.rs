//! TokenReview against real request/response payloads, and over HTTPS
//! against a stand-in API server (no Kubernetes runs here).

use super::*;

const TD: &str = "cluster.local";
const AUD: &str = "mesh-identity";

/// A response as kube-apiserver 1.30 returns it for a projected token.
const AUTHENTICATED: &str = r#"{
  "kind": "TokenReview",
  "apiVersion": "authentication.k8s.io/v1",
  "metadata": {"creationTimestamp": null},
  "spec": {"token": "eyJhbGciOiJSUzI1NiIsImtpZCI6IiJ9.e30.sig", "audiences": ["mesh-identity"]},
  "status": {
    "authenticated": true,
    "user": {
      "username": "system:serviceaccount:shop:books",
      "uid": "0d4b6a1e-6a43-4e0e-9a55-0c6e9b0f3d21",
      "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
      "extra": {
        "authentication.kubernetes.io/pod-name": ["books-7d9c8b6f5-x2x9k"],
        "authentication.kubernetes.io/pod-uid": ["5d7f2a5c-1e0a-4f0b-8b1a-2f5d0e7c9a11"]
      }
    },
    "audiences": ["mesh-identity"]
  }
}"#;

const UNAUTHENTICATED: &str = r#"{
  "kind": "TokenReview",
  "apiVersion": "authentication.k8s.io/v1",
  "metadata": {"creationTimestamp": null},
  "spec": {"token": "x", "audiences": ["mesh-identity"]},
  "status": {"user": {}, "error": "[invalid bearer token, token has been invalidated]"}
}"#;

const OTHER_AUDIENCE: &str = r#"{
  "kind": "TokenReview",
  "apiVersion": "authentication.k8s.io/v1",
  "spec": {"token": "x"},
  "status": {"authenticated": true, "user": {"username": "system:serviceaccount:shop:books"}, "audiences": ["https://kubernetes.default.svc"]}
}"#;

#[test]
fn request_is_a_v1_token_review_with_the_mesh_audience() {
    let json = serde_json::to_value(TokenReview::new("tok", AUD)).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": "tok", "audiences": ["mesh-identity"]}
        })
    );
}

#[test]
fn responses_map_to_identities_or_precise_refusals() {
    let id = identity_from_review(AUTHENTICATED.as_bytes(), AUD, TD).expect("authenticated");
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/books");
    let e = identity_from_review(UNAUTHENTICATED.as_bytes(), AUD, TD).expect_err("refused");
    assert!(matches!(&e, ProofError::Refused(m) if m.contains("invalidated")), "{e}");
    let e = identity_from_review(OTHER_AUDIENCE.as_bytes(), AUD, TD).expect_err("audience");
    assert_eq!(e.reason(), "wrong_audience");
    let user = AUTHENTICATED.replace("system:serviceaccount:shop:books", "alice@example.com");
    assert!(identity_from_review(user.as_bytes(), AUD, TD).is_err(), "only ServiceAccounts get identities");
    assert_eq!(identity_from_review(b"<html>", AUD, TD).expect_err("garbage").reason(), "verifier_unavailable");
}

#[tokio::test]
async fn reviews_over_https_with_the_bearer_token() {
    use mesh_identity::ca;
    // A stand-in API server with a certificate for "localhost".
    let anchor = ca::generate_trust_anchor("k8s", Duration::from_secs(3600)).expect("anchor");
    let issuer = ca::generate_issuer("k8s", &anchor, Duration::from_secs(3600)).expect("issuer");
    let roots = mesh_identity::pem::certs(&anchor.cert_pem).expect("roots");
    let ca = mesh_identity::ca::IssuerCa::load(&issuer.cert_pem, &issuer.key_pem, &roots).expect("ca");
    let id = SpiffeId::new("k8s", "kube-system", "apiserver").expect("id");
    let (leaf, key) = ca.issue_with_key(&id, &["localhost".into()], Duration::from_secs(3600)).expect("leaf");
    let server_creds = mesh_identity::tls::Credentials::new(roots.clone()).expect("creds");
    server_creds
        .set_leaf(leaf.chain, mesh_identity::tls::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .expect("leaf");
    let server_cfg = server_creds.server_config(false, &[]).expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = mesh_identity::tls::accept(server_cfg.clone(), tcp).await else { continue };
            let (tls, _) = tls.into_parts();
            let seen = seen2.clone();
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let auth =
                        req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let path = req.uri().path().to_string();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    seen.lock().expect("lock").push(format!("{path} {auth} {}", String::from_utf8_lossy(&body)));
                    let reply = if body.windows(4).any(|w| w == b"good") { AUTHENTICATED } else { UNAUTHENTICATED };
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(reply))))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc));
        }
    });

    let client_cfg = mesh_identity::tls::web_client_config(roots).expect("client config");
    let reviewer = TokenReviewer::new("localhost", port, "control-plane-sa-token\n", client_cfg, AUD);
    let proof = reviewer.verify("good-token", TD).await.expect("reviewed");
    assert_eq!(proof.identity.to_string(), "spiffe://cluster.local/ns/shop/sa/books");
    assert_eq!(proof.once, None, "projected tokens are re-presented as they rotate: not single-use");
    assert!(reviewer.verify("bad-token", TD).await.is_err());
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen[0].starts_with("/apis/authentication.k8s.io/v1/tokenreviews Bearer control-plane-sa-token {"),
        "{seen:?}"
    );
    assert!(seen[0].contains(r#""audiences":["mesh-identity"]"#), "{seen:?}");
    // Unreachable API server: unavailable, not refused.
    let down = TokenReviewer::new("localhost", 1, "t", reviewer.tls.clone(), AUD);
    assert_eq!(down.verify("good-token", TD).await.expect_err("down").reason(), "verifier_unavailable");
}
