use super::*;
use crate::pem::certs;

const DAY: Duration = Duration::from_secs(86_400);

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("mesh.local", "default", sa).expect("id")
}

fn ca() -> (CertAndKey, IssuerCa) {
    let anchor = generate_trust_anchor("mesh.local", DAY * 365).expect("anchor");
    let issuer = generate_issuer("mesh.local", &anchor, DAY * 30).expect("issuer");
    let roots = certs(&anchor.cert_pem).expect("roots");
    let ca = IssuerCa::load(&issuer.cert_pem, &issuer.key_pem, &roots).expect("load");
    (anchor, ca)
}

#[test]
fn signs_a_csr_for_the_allowed_identity_only() {
    let (_anchor, ca) = ca();
    let (_key, csr) = generate_csr(&id("books")).expect("csr");
    let leaf = ca.sign_csr(&csr, &id("books"), Duration::from_secs(3600)).expect("signed");
    assert_eq!(leaf.chain.len(), 2);
    let info = CertInfo::parse(&leaf.chain[0]).expect("parse");
    assert_eq!(info.spiffe_id(), Some("spiffe://mesh.local/ns/default/sa/books"));
    assert!(!info.is_ca);
    let life = info.not_after.duration_since(SystemTime::now()).expect("future");
    assert!(life <= Duration::from_secs(3600) && life > Duration::from_secs(3500));

    let err = ca.sign_csr(&csr, &id("admin"), Duration::from_secs(60)).expect_err("wrong identity");
    assert!(matches!(err, CsrError::WrongIdentity { .. }), "{err}");
    let err = ca.sign_csr(b"\x30\x03garbage", &id("books"), Duration::from_secs(60)).expect_err("garbage");
    assert!(matches!(err, CsrError::Malformed(_)), "{err}");
}

#[test]
fn a_csr_cannot_ask_to_be_a_ca() {
    let (_anchor, ca) = ca();
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec![]).expect("params");
    p.subject_alt_names = vec![SanType::URI(id("books").to_string().try_into().expect("uri"))];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = p.serialize_request(&key).expect("csr");
    let leaf = ca.sign_csr(csr.der(), &id("books"), DAY).expect("signed");
    assert!(!CertInfo::parse(&leaf.chain[0]).expect("parse").is_ca, "CSR fields must be ignored");
}

#[test]
fn issuer_must_chain_to_an_anchor_and_match_its_key() {
    let anchor = generate_trust_anchor("mesh.local", DAY).expect("anchor");
    let other = generate_trust_anchor("mesh.local", DAY).expect("other");
    let issuer = generate_issuer("mesh.local", &anchor, DAY).expect("issuer");
    let err = IssuerCa::load(&issuer.cert_pem, &issuer.key_pem, &certs(&other.cert_pem).expect("roots"))
        .expect_err("foreign");
    assert!(matches!(err, CaError::NotSignedByAnchor), "{err}");
    let roots = certs(&anchor.cert_pem).expect("roots");
    let err = IssuerCa::load(&issuer.cert_pem, &other.key_pem, &roots).expect_err("key mismatch");
    assert!(matches!(err, CaError::KeyMismatch), "{err}");
    let (_leaf_key, _) = generate_csr(&id("x")).expect("csr");
    let err = IssuerCa::load(&issuer.cert_pem, "not a key", &roots).expect_err("bad key");
    assert!(err.to_string().contains("key") || err.to_string().contains("PEM"), "{err}");
    // Two anchors (rotation): either may sign the issuer.
    let both = certs(&format!("{}{}", other.cert_pem, anchor.cert_pem)).expect("bundle");
    assert!(IssuerCa::load(&issuer.cert_pem, &issuer.key_pem, &both).is_ok());
}

#[test]
fn leaves_never_outlive_the_issuer() {
    let anchor = generate_trust_anchor("mesh.local", DAY).expect("anchor");
    let issuer = generate_issuer("mesh.local", &anchor, Duration::from_secs(600)).expect("issuer");
    let ca = IssuerCa::load(&issuer.cert_pem, &issuer.key_pem, &certs(&anchor.cert_pem).expect("roots")).expect("load");
    let (_k, csr) = generate_csr(&id("books")).expect("csr");
    let leaf = ca.sign_csr(&csr, &id("books"), DAY).expect("signed");
    assert!(leaf.not_after <= ca.not_after());
}
