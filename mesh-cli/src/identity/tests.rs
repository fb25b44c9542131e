//! Unit tests of `meshctl identity`'s parsing, rendering and snapshot.

use super::files::write_secret;
use super::show::{relative, shown, span, utc};
use super::snapshot::Snapshot;
use super::status::render_status;
use super::{parse_long_duration, parse_ttl, parse_validity};
use mesh_identity::dir::{self, IdentityDir};
use std::path::Path;
use std::time::{Duration, SystemTime};

#[test]
fn durations_with_days() {
    assert_eq!(parse_long_duration("365d"), Ok(Duration::from_secs(365 * 86_400)));
    assert_eq!(parse_long_duration("1.5d"), Ok(Duration::from_secs(129_600)));
    assert_eq!(parse_long_duration("24h"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_long_duration("90s"), Ok(Duration::from_secs(90)));
    for bad in ["", "d", "-1d", "xd", "10", "1y", "NaNd", "infd"] {
        assert!(parse_long_duration(bad).is_err(), "{bad}");
    }
    assert!(parse_ttl("500ms").is_err());
    assert!(parse_validity("30m").is_err());
    assert_eq!(parse_validity("90d"), Ok(Duration::from_secs(90 * 86_400)));
}

#[test]
fn times_for_people() {
    assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(utc(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723)), "2000-02-29T01:02:03Z");
    assert_eq!(span(Duration::from_secs(45)), "45s");
    assert_eq!(span(Duration::from_secs(600)), "10m");
    assert_eq!(span(Duration::from_secs(86_400)), "24h");
    assert_eq!(span(Duration::from_secs(365 * 86_400)), "365 days");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    assert_eq!(relative(now + Duration::from_secs(3 * 86_400), now), "in 3 days");
    assert_eq!(relative(now - Duration::from_secs(300), now), "expired 5m ago");
}

#[test]
fn paths_are_quoted_for_the_shell() {
    assert_eq!(shown(Path::new("/tmp/id-1")), "/tmp/id-1");
    assert_eq!(shown(Path::new("/tmp/my dir")), "'/tmp/my dir'");
    assert_eq!(shown(Path::new("it's")), r"'it'\''s'");
}

#[test]
fn secrets_are_private_and_replaced_whole() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("token");
    write_secret(&file, "one\n").expect("write");
    write_secret(&file, "two\n").expect("rewrite");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "two\n");
    let mode = std::fs::metadata(&file).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let names: Vec<_> = std::fs::read_dir(tmp.path()).expect("list").flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 1, "no temporary files left: {names:?}");
    assert!(write_secret(&tmp.path().join("missing").join("token"), "x").is_err());
}

#[test]
fn snapshot_follows_a_rotation() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let d = IdentityDir::new(tmp.path().join("id"));
    d.init("mesh.local", None).expect("init");
    let s = Snapshot::read(&d).expect("snapshot");
    assert_eq!((s.trust_domain.as_str(), s.anchors.len(), s.issuer_under_newest), ("mesh.local", 1, true));
    assert_eq!(s.stage(d.path()).0, "none");
    assert!(s.problem.is_none() && s.anchor_key);
    assert!(s.warnings(d.path(), SystemTime::now()).is_empty());
    let soon = SystemTime::now() + Duration::from_secs(340 * 86_400);
    let w = s.warnings(d.path(), soon);
    assert!(w.len() == 1 && w[0].contains("the issuer expires in"), "{w:?}");

    d.add_anchor().expect("add");
    let s = Snapshot::read(&d).expect("snapshot");
    assert_eq!((s.anchors.len(), s.issuer_under_newest, s.stage(d.path()).0), (2, false, "anchor-added"));
    d.rotate_issuer(dir::ISSUER_VALIDITY).expect("issuer");
    let s = Snapshot::read(&d).expect("snapshot");
    assert_eq!((s.issuer_under_newest, s.stage(d.path()).0), (true, "issuer-rotated"));
    let text = render_status(&d, &s, SystemTime::now());
    assert!(text.contains("anchor rotation in progress: 2 anchors"), "{text}");
    assert!(text.contains("retire-anchor"), "{text}");
}

#[test]
fn a_broken_directory_is_still_shown() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let d = IdentityDir::new(tmp.path());
    d.init("mesh.local", None).expect("init");
    std::fs::write(tmp.path().join(dir::ISSUER_KEY), "garbage").expect("write");
    let s = Snapshot::read(&d).expect("snapshot");
    assert!(s.issuer.is_some());
    assert!(s.problem.is_some());
    assert!(!render_status(&d, &s, SystemTime::now()).contains("ok: "));
}
