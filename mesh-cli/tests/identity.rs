//! `meshctl identity`, the real binary on real files: init, tokens, a full
//! anchor rotation, and refusals out of order.

use mesh_identity::dir::IdentityDir;
use mesh_identity::token::{AUDIENCE, peek, unix_now};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `meshctl identity ARGS` (no MESH_IDENTITY_DIR from the environment).
fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("identity")
        .args(args)
        .env_remove("MESH_IDENTITY_DIR")
        .output()
        .expect("run meshctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and expects success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = meshctl(args);
    assert!(out.status.success(), "meshctl identity {args:?} failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Runs and expects failure (exit 1, nothing on stdout); returns stderr.
fn fails(args: &[&str]) -> String {
    let out = meshctl(args);
    assert_eq!(out.status.code(), Some(1), "meshctl identity {args:?}:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    assert!(out.stdout.is_empty(), "errors go to stderr: {}", text(&out.stdout));
    text(&out.stderr)
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(&all)).expect("JSON output")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn init_token_and_a_full_rotation_in_order() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("identity");
    let d = dir.to_str().expect("utf-8 path");

    let out = ok(&["init", "--dir", d, "--trust-domain", "prod.example"]);
    assert!(out.contains("created identity directory") && out.contains("trust domain prod.example"), "{out}");
    assert!(out.contains(&format!("mesh-control --identity-dir {d}")), "next steps name the control plane: {out}");
    assert!(out.contains("--trust-anchors") && out.contains("trust-anchors.pem"), "{out}");
    assert_eq!(mode(&dir), 0o700);
    for key in ["trust-anchor.key", "issuer.key", "token.key"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    let err = fails(&["init", "--dir", d, "--trust-domain", "prod.example"]);
    assert!(err.contains("refusing to overwrite"), "{err}");

    // A token on stdout, alone; its claims name the identity.
    let out = meshctl(&["token", "--dir", d, "--namespace", "shop", "--service-account", "books", "--ttl", "2h"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "only the token on stdout: {stdout:?}");
    let token = stdout.trim();
    let claims = peek(token).expect("a join token");
    assert_eq!(claims.sub, "spiffe://prod.example/ns/shop/sa/books");
    assert!((7_100..=7_200).contains(&(claims.exp - unix_now())), "2h: {claims:?}");
    let key = IdentityDir::new(&dir).load().expect("load").token_key;
    key.verify(token, AUDIENCE, unix_now()).expect("signed with the directory's key");

    // --output: the file, mode 0600, and nothing on stdout.
    let file = tmp.path().join("books.token");
    let f = file.to_str().expect("utf-8 path");
    let out = meshctl(&["token", "--dir", d, "--namespace", "shop", "--service-account", "books", "--output", f]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("spiffe://prod.example/ns/shop/sa/books"));
    assert_eq!(mode(&file), 0o600);
    let written = std::fs::read_to_string(&file).expect("token file");
    let second = peek(&written).expect("a join token");
    assert_eq!(second.sub, claims.sub);
    // Tokens bootstrap the first certificate only: minutes by default, each with its own id.
    assert!((590..=600).contains(&(second.exp - unix_now())), "10m by default: {second:?}");
    assert!(!second.jti.is_empty() && second.jti != claims.jti, "{claims:?} {second:?}");

    let status = ok(&["status", "--dir", d]);
    assert!(status.contains("trust domain:       prod.example"), "{status}");
    assert!(status.contains("CN=prod.example trust anchor") && status.contains("CN=prod.example issuer"), "{status}");
    assert!(!status.contains("warning"), "{status}");

    // Step 1.
    let added = json(&["rotate", "add-anchor", "--dir", d]);
    assert_eq!(added["anchors"], 2);
    let new_anchor = added["new_anchor"]["sha256"].as_str().expect("fingerprint").to_string();
    assert!(added["next"].as_str().is_some_and(|n| n.contains("identity_trust_anchors")), "{added}");
    // Out of order: a second rotation, and retiring before the issuer moved.
    let err = fails(&["rotate", "add-anchor", "--dir", d]);
    assert!(err.contains("finish the current rotation"), "{err}");
    let err = fails(&["rotate", "retire-anchor", "--dir", d, "--force"]);
    assert!(err.contains("rotate issuer` first"), "{err}");
    let s = json(&["status", "--dir", d]);
    assert_eq!((s["rotation"].as_str(), s["anchors"].as_array().map(Vec::len)), (Some("anchor-added"), Some(2)));

    // Step 2.
    let out = ok(&["rotate", "issuer", "--dir", d, "--validity", "400d"]);
    assert!(out.contains("issued a new issuer") && out.contains("retire-anchor"), "{out}");
    assert!(out.contains("wait at least one certificate lifetime"), "{out}");
    let s = json(&["status", "--dir", d]);
    assert_eq!(s["rotation"], "issuer-rotated");
    assert_eq!(s["issuer_signed_by_newest_anchor"], true);
    let left = s["issuer"]["expires_in_seconds"].as_u64().expect("seconds");
    assert!(left > 399 * 86_400, "--validity 400d: {left}");

    // Step 3: too early for the default certificate lifetime, unless forced.
    let err = fails(&["rotate", "retire-anchor", "--dir", d]);
    assert!(err.contains("not yet") && err.contains("--cert-ttl"), "{err}");
    let out = ok(&["rotate", "retire-anchor", "--dir", d, "--force"]);
    assert!(out.contains("retired 1 old trust anchor"), "{out}");
    let s = json(&["status", "--dir", d]);
    assert_eq!(s["rotation"], "none");
    assert_eq!(s["anchors"].as_array().map(Vec::len), Some(1));
    assert_eq!(s["anchors"][0]["sha256"].as_str(), Some(new_anchor.as_str()), "the new anchor stays: {s}");
    assert!(s["problem"].is_null(), "{s}");

    // Nothing left to retire is not an error.
    let out = ok(&["rotate", "retire-anchor", "--dir", d]);
    assert!(out.contains("nothing to retire"), "{out}");
    // Tokens outlive rotations: the token key did not change.
    let key = IdentityDir::new(&dir).load().expect("load").token_key;
    key.verify(token, AUDIENCE, unix_now()).expect("still valid");
}

#[test]
fn own_ca_material_and_its_limits() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let theirs = tmp.path().join("theirs");
    let other = tmp.path().join("other");
    for dir in [&theirs, &other] {
        IdentityDir::new(dir).init("corp.example", None).expect("a CA to bring");
    }
    let pem = |dir: &Path, name: &str| dir.join(name).display().to_string();
    let mine = tmp.path().join("mine");
    let d = mine.to_str().expect("utf-8 path");
    let (anchors, cert, key) =
        (pem(&theirs, "trust-anchors.pem"), pem(&theirs, "issuer.crt"), pem(&theirs, "issuer.key"));

    // An issuer from another CA, or half the flags, are refused.
    let foreign = pem(&other, "issuer.crt");
    let args = ["init", "--dir", d, "--trust-domain", "corp.example", "--trust-anchor", &anchors];
    let err = fails(&[&args[..], &["--issuer-cert", &foreign, "--issuer-key", &key]].concat());
    assert!(err.contains("is not signed by any certificate in --trust-anchor"), "{err}");
    assert!(!mine.exists(), "a refused init leaves nothing behind");
    let out = meshctl(&args);
    assert_eq!(out.status.code(), Some(2), "clap wants all three: {}", text(&out.stderr));

    let out = ok(&[&args[..], &["--issuer-cert", &cert, "--issuer-key", &key]].concat());
    assert!(out.contains("with your own CA"), "{out}");
    assert!(!mine.join("trust-anchor.key").exists(), "the anchor's key stays with its owner");
    assert_eq!(
        std::fs::read_to_string(mine.join("issuer.crt")).ok(),
        std::fs::read_to_string(&cert).ok(),
        "the issuer is the one given"
    );
    let token = ok(&["token", "--dir", d, "--namespace", "default", "--service-account", "web"]);
    assert_eq!(peek(&token).expect("a join token").sub, "spiffe://corp.example/ns/default/sa/web");

    let err = fails(&["rotate", "issuer", "--dir", d]);
    assert!(err.contains("trust-anchor.key is missing") && err.contains("your own CA"), "{err}");
}

#[test]
fn helpful_errors_and_warnings() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("id");
    let d = dir.to_str().expect("utf-8 path");

    let err = fails(&["status", "--dir", d]);
    assert!(err.contains("is not an identity directory") && err.contains("meshctl identity init"), "{err}");
    let err = fails(&["init", "--dir", d, "--trust-domain", "Not_A_Domain"]);
    assert!(err.contains("invalid trust domain"), "{err}");
    assert!(!dir.exists());

    ok(&["init", "--dir", d, "--trust-domain", "mesh.local"]);
    let err = fails(&["token", "--dir", d, "--namespace", "default", "--service-account", "Web"]);
    assert!(err.contains("invalid identity"), "{err}");
    let out = meshctl(&["token", "--dir", d, "--namespace", "default", "--service-account", "web", "--ttl", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // An issuer about to expire is flagged.
    ok(&["rotate", "issuer", "--dir", d, "--validity", "10d"]);
    let status = ok(&["status", "--dir", d]);
    assert!(status.contains("warning: the issuer expires in"), "{status}");
    assert!(status.contains("meshctl identity rotate issuer"), "{status}");
    let s = json(&["status", "--dir", d]);
    assert_eq!(s["warnings"].as_array().map(Vec::len), Some(1), "{s}");

    // A broken directory is shown, with what is wrong, and fails.
    std::fs::write(dir.join("issuer.key"), "not a key").expect("write");
    let out = meshctl(&["status", "--dir", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("CN=mesh.local issuer"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("the control plane would refuse this directory"), "{}", text(&out.stderr));
}
