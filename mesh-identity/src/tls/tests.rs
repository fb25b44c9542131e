//! Real TLS handshakes between in-memory peers.

use super::*;
use crate::SpiffeId;
use crate::ca::{self, CertAndKey, IssuerCa};
use crate::pem::certs;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

struct Pki {
    anchor: CertAndKey,
    issuer: IssuerCa,
}

fn pki() -> Pki {
    let anchor = ca::generate_trust_anchor("mesh.local", DAY).expect("anchor");
    let issuer = ca::generate_issuer("mesh.local", &anchor, DAY).expect("issuer");
    let issuer =
        IssuerCa::load(&issuer.cert_pem, &issuer.key_pem, &certs(&anchor.cert_pem).expect("pem")).expect("load");
    Pki { anchor, issuer }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("mesh.local", "default", sa).expect("id")
}

/// Credentials for `sa` trusting `trust`, with a leaf from `pki` living `ttl`.
fn creds(pki: &Pki, trust: &[&Pki], sa: &str, ttl: Duration) -> Arc<Credentials> {
    let anchors = trust.iter().flat_map(|p| certs(&p.anchor.cert_pem).expect("pem")).collect();
    let c = Credentials::new(anchors).expect("creds");
    issue(pki, &c, sa, ttl);
    c
}

fn issue(pki: &Pki, c: &Credentials, sa: &str, ttl: Duration) {
    let (key, csr) = ca::generate_csr(&id(sa)).expect("csr");
    let leaf = pki.issuer.sign_csr(&csr, &id(sa), ttl).expect("sign");
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    c.set_leaf(leaf.chain, key).expect("leaf");
}

/// Runs one handshake; returns (client result, server-seen client identity).
async fn handshake(
    server: &Arc<Credentials>,
    client: &Arc<Credentials>,
    expect: &str,
) -> (Result<String, String>, Option<String>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server_config = server.server_config(true, &[ALPN_HTTP2]).expect("server config");
    let client_config = client.client_config(expect, &[ALPN_HTTP2]).expect("client config");
    let name = server_name("127.0.0.1").expect("name");
    let (c, s) = tokio::join!(connect(client_config, name, a), accept(server_config, b));
    let seen = s.ok().and_then(|s| {
        assert_eq!(s.alpn(), Some(ALPN_HTTP2));
        s.peer_id().map(str::to_string)
    });
    let c = c.map_err(|e| e.to_string()).map(|c| {
        let conn = c.get_ref().1;
        format!(
            "{:?} {:?} {:?}",
            conn.protocol_version(),
            conn.negotiated_key_exchange_group().map(|g| g.name()),
            conn.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned())
        )
    });
    (c, seen)
}

#[tokio::test]
async fn mutual_tls_with_post_quantum_key_exchange() {
    let p = pki();
    let server = creds(&p, &[&p], "books", DAY);
    let client = creds(&p, &[&p], "web", DAY);
    let (c, seen) = handshake(&server, &client, "spiffe://mesh.local/ns/default/sa/books").await;
    let c = c.expect("handshake");
    assert!(c.contains("TLSv1_3"), "{c}");
    assert!(c.contains("X25519MLKEM768"), "hybrid PQ key exchange must be preferred: {c}");
    assert!(c.contains("mesh/h2"), "{c}");
    assert_eq!(seen.as_deref(), Some("spiffe://mesh.local/ns/default/sa/web"));
}

#[tokio::test]
async fn refuses_a_server_with_another_identity() {
    let p = pki();
    let server = creds(&p, &[&p], "books", DAY);
    let client = creds(&p, &[&p], "web", DAY);
    let (c, _) = handshake(&server, &client, "spiffe://mesh.local/ns/default/sa/authors").await;
    let e = c.expect_err("identity mismatch must fail");
    assert!(e.contains("IdentityMismatch") && e.contains("sa/authors"), "{e}");
}

#[tokio::test]
async fn refuses_peers_from_another_trust_anchor() {
    let ours = pki();
    let theirs = pki();
    let server = creds(&ours, &[&ours], "books", DAY);
    let intruder = creds(&theirs, &[&ours], "web", DAY);
    let (c, seen) = handshake(&server, &intruder, "spiffe://mesh.local/ns/default/sa/books").await;
    assert!(seen.is_none(), "server must refuse a client certificate from a foreign anchor");
    let _ = c;
    // And the other way round: a foreign server.
    let client = creds(&ours, &[&ours], "web", DAY);
    let foreign = creds(&theirs, &[&theirs], "books", DAY);
    let (c, _) = handshake(&foreign, &client, "spiffe://mesh.local/ns/default/sa/books").await;
    assert!(c.is_err());
}

#[tokio::test]
async fn refuses_expired_certificates() {
    let p = pki();
    let server = creds(&p, &[&p], "books", DAY);
    // Backdating makes a leaf with a zero lifetime already expired.
    let client = creds(&p, &[&p], "web", Duration::ZERO);
    // Certificate times have one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!client.has_valid_leaf());
    let (_, seen) = handshake(&server, &client, "spiffe://mesh.local/ns/default/sa/books").await;
    assert!(seen.is_none(), "an expired client certificate must be refused");
}

#[tokio::test]
async fn anchors_and_leaves_change_live() {
    let old = pki();
    let new = pki();
    // Both sides trust old + new during the rotation.
    let server = creds(&old, &[&old, &new], "books", DAY);
    let client = creds(&new, &[&old, &new], "web", DAY);
    let expect = "spiffe://mesh.local/ns/default/sa/books";
    assert!(handshake(&server, &client, expect).await.1.is_some(), "mixed issuers work while both anchors are trusted");
    // Retiring the old anchor before the server renews breaks it ...
    client.set_bundle(certs(&new.anchor.cert_pem).expect("pem")).expect("bundle");
    server.set_bundle(certs(&new.anchor.cert_pem).expect("pem")).expect("bundle");
    assert!(handshake(&server, &client, expect).await.0.is_err());
    // ... and renewing under the new issuer fixes it, with the same configs.
    issue(&new, &server, "books", DAY);
    assert!(handshake(&server, &client, expect).await.1.is_some());
}

#[test]
fn rejects_empty_bundles_and_mismatched_keys() {
    assert!(Credentials::new(vec![]).is_err());
    let p = pki();
    let c = Credentials::new(certs(&p.anchor.cert_pem).expect("pem")).expect("creds");
    let (_key, csr) = ca::generate_csr(&id("a")).expect("csr");
    let leaf = p.issuer.sign_csr(&csr, &id("a"), DAY).expect("sign");
    let other = rcgen::KeyPair::generate().expect("key");
    let err = c.set_leaf(leaf.chain, PrivateKeyDer::Pkcs8(other.serialize_der().into()));
    assert!(err.is_err(), "a key that does not match the leaf is refused");
}

#[test]
fn server_names_are_ips_or_dns_names() {
    assert!(matches!(server_name("10.0.0.1"), Ok(ServerName::IpAddress(_))));
    assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
    assert!(matches!(server_name("kubernetes.default.svc"), Ok(ServerName::DnsName(_))));
    assert!(server_name("not a name").is_err());
}

#[test]
fn web_client_configs_need_a_root() {
    assert!(web_client_config(vec![]).is_err());
    let p = pki();
    assert!(web_client_config(certs(&p.anchor.cert_pem).expect("pem")).is_ok());
}

/// One connection with configurations that persist between connections (so
/// the client can resume with a ticket from an earlier one). The server
/// writes a byte the client reads, so the client receives its tickets.
/// Returns how each side's handshake went, or its error.
async fn session(
    server: &MeshServerConfig,
    client: &MeshClientConfig,
) -> (Result<Handshake, std::io::Error>, Result<(Handshake, Option<String>), std::io::Error>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = server_name("127.0.0.1").expect("name");
    let serve = async {
        let s = accept(server.clone(), b).await?;
        let seen = (s.handshake(), s.peer_id().map(str::to_string));
        let (mut s, _) = s.into_parts();
        s.write_all(b"!").await?;
        s.flush().await?;
        let _ = s.read(&mut [0u8; 1]).await;
        Ok(seen)
    };
    let dial = async {
        let mut c = connect(client.clone(), name, a).await?;
        let h = client_handshake(&c);
        let mut byte = [0u8; 1];
        c.read_exact(&mut byte).await?;
        let _ = c.shutdown().await;
        Ok(h)
    };
    tokio::join!(dial, serve)
}

const BOOKS: &str = "spiffe://mesh.local/ns/default/sa/books";

/// Waits until a certificate of `ttl` issued at `issued` has expired
/// (certificate times have one-second resolution).
async fn outlive(issued: std::time::Instant, ttl: Duration) {
    let until = issued + ttl + Duration::from_millis(1100);
    tokio::time::sleep(until.saturating_duration_since(std::time::Instant::now())).await;
}

#[tokio::test]
async fn sessions_resume_from_tickets() {
    let p = pki();
    let server = creds(&p, &[&p], "books", DAY);
    let client = creds(&p, &[&p], "web", DAY);
    let (sc, cc) =
        (server.server_config(true, &[ALPN_HTTP2]).expect("s"), client.client_config(BOOKS, &[ALPN_HTTP2]).expect("c"));
    let (c, s) = session(&sc, &cc).await;
    assert!(!c.expect("first").resumed, "the first connection is a full handshake");
    assert!(!s.expect("first").0.resumed);
    let (c, s) = session(&sc, &cc).await;
    assert!(c.expect("second").resumed, "the second connection resumes with a ticket");
    let (h, peer) = s.expect("second");
    assert!(h.resumed);
    assert_eq!(peer.as_deref(), Some("spiffe://mesh.local/ns/default/sa/web"), "identity restored from the ticket");
}

/// The bug: rustls restores the client chain from the ticket and never
/// verifies it again, so an expired client kept its identity by resuming.
#[tokio::test]
async fn a_client_whose_certificate_expired_cannot_resume() {
    let p = pki();
    let server = creds(&p, &[&p], "books", DAY);
    let ttl = Duration::from_secs(2);
    let issued = std::time::Instant::now();
    let client = creds(&p, &[&p], "web", ttl);
    let (sc, cc) =
        (server.server_config(true, &[ALPN_HTTP2]).expect("s"), client.client_config(BOOKS, &[ALPN_HTTP2]).expect("c"));
    session(&sc, &cc).await.1.expect("full handshake");
    let (c, _) = session(&sc, &cc).await;
    assert!(c.expect("resumed while valid").resumed, "the test must exercise resumption");
    outlive(issued, ttl).await;
    assert!(!client.has_valid_leaf());
    let (_, s) = session(&sc, &cc).await;
    let e = s.expect_err("an expired client must be refused, ticket or not");
    assert!(ResumptionRefused::is(&e), "refused as a resumed session: {e}");
    assert!(e.to_string().contains("certificate expired"), "{e}");
}

/// Retiring an anchor: a client with a leaf under it is refused even with a
/// ticket issued while the anchor was trusted.
#[tokio::test]
async fn a_client_under_a_retired_anchor_cannot_resume() {
    let old = pki();
    let new = pki();
    let server = creds(&new, &[&old, &new], "books", DAY);
    let client = creds(&old, &[&old, &new], "web", DAY);
    let (sc, cc) =
        (server.server_config(true, &[ALPN_HTTP2]).expect("s"), client.client_config(BOOKS, &[ALPN_HTTP2]).expect("c"));
    session(&sc, &cc).await.1.expect("full handshake");
    assert!(session(&sc, &cc).await.0.expect("resumed").resumed, "the test must exercise resumption");
    server.set_bundle(certs(&new.anchor.cert_pem).expect("pem")).expect("bundle");
    let (_, s) = session(&sc, &cc).await;
    assert!(s.is_err(), "a leaf under a retired anchor must be refused, ticket or not");
}

/// The client side: a resumed session whose server certificate (from the
/// client's session cache) has expired is refused.
#[tokio::test]
async fn a_server_whose_certificate_expired_is_not_resumed() {
    let p = pki();
    let ttl = Duration::from_secs(2);
    let issued = std::time::Instant::now();
    let server = creds(&p, &[&p], "books", ttl);
    let client = creds(&p, &[&p], "web", DAY);
    let (sc, cc) =
        (server.server_config(true, &[ALPN_HTTP2]).expect("s"), client.client_config(BOOKS, &[ALPN_HTTP2]).expect("c"));
    session(&sc, &cc).await.0.expect("full handshake");
    assert!(session(&sc, &cc).await.0.expect("resumed").resumed, "the test must exercise resumption");
    outlive(issued, ttl).await;
    let (c, _) = session(&sc, &cc).await;
    let e = c.expect_err("an expired server must be refused, ticket or not");
    assert!(e.to_string().contains("certificate expired"), "{e}");
}

/// A session cached for one expected identity is never used for another at
/// the same address (a regression guard: rustls resumes only with the
/// verifier that verified the session, and each configuration has its own).
#[tokio::test]
async fn sessions_are_not_shared_between_expected_identities() {
    let p = pki();
    let server = creds(&p, &[&p], "books", DAY);
    let client = creds(&p, &[&p], "web", DAY);
    let sc = server.server_config(true, &[ALPN_HTTP2]).expect("s");
    let books = client.client_config(BOOKS, &[ALPN_HTTP2]).expect("c");
    session(&sc, &books).await.0.expect("full handshake");
    assert!(session(&sc, &books).await.0.expect("resumed").resumed);
    let authors = client.client_config("spiffe://mesh.local/ns/default/sa/authors", &[ALPN_HTTP2]).expect("c");
    let e = session(&sc, &authors).await.0.expect_err("another expected identity needs a full handshake");
    assert!(e.to_string().contains("IdentityMismatch"), "{e}");
}

/// Ticket keys change with the credentials: a ticket issued before the
/// server's bundle or leaf changed is not accepted after.
#[tokio::test]
async fn ticket_keys_change_with_the_credentials() {
    let p = pki();
    let server = creds(&p, &[&p], "books", DAY);
    let client = creds(&p, &[&p], "web", DAY);
    let (sc, cc) =
        (server.server_config(true, &[ALPN_HTTP2]).expect("s"), client.client_config(BOOKS, &[ALPN_HTTP2]).expect("c"));
    session(&sc, &cc).await.0.expect("full handshake");
    issue(&p, &server, "books", DAY);
    assert!(!session(&sc, &cc).await.0.expect("full").resumed, "a renewed server leaf invalidates tickets");
    assert!(session(&sc, &cc).await.0.expect("resumed").resumed);
    server.set_bundle(certs(&p.anchor.cert_pem).expect("pem")).expect("bundle");
    assert!(!session(&sc, &cc).await.0.expect("full").resumed, "a new bundle invalidates tickets");
    assert!(sc.rustls().ticketer.lifetime() <= u32::try_from(MAX_TICKET_LIFETIME.as_secs()).expect("u32"));
}
