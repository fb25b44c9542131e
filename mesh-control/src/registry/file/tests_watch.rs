//! Reading the file, and [`FileRegistry`] watching it: reloads, rejected
//! files, vanished and half-written files.

use super::test_support::{Fixture, books, fixture};
use super::*;
use crate::store::Target;
use std::io::Write as _;

// --- Reading ------------------------------------------------------------------

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, books("127.0.0.1:4243")).expect("write");
    assert_eq!(load(&path).expect("valid").endpoint_count(), 1);

    let missing = dir.path().join("missing.yaml");
    let err = load(&missing).expect_err("missing");
    assert!(matches!(err, FileError::Read { .. }));
    assert!(err.to_string().starts_with("cannot read registry file "), "{err}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");

    std::fs::write(&path, b"services: []\n# caf\xe9\n").expect("write");
    match load(&path) {
        Err(FileError::Invalid { problems, .. }) => {
            assert_eq!((problems[0].line, problems[0].column), (2, 6));
            assert!(problems[0].message.contains("not valid UTF-8"));
        }
        other => panic!("expected invalid UTF-8, got {other:?}"),
    }
}

// --- Watching -----------------------------------------------------------------

fn resolves(store: &Store, addr: &str) -> bool {
    let target: Target = "books.default:7001".parse().expect("target");
    let addr: SocketAddr = addr.parse().expect("address");
    store.resolve(&target).endpoints.contains_key(&addr)
}

/// Waits up to 1 s for `check` to hold.
async fn within_a_second(check: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// Writes like most editors: a new file renamed over the old one.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over");
}

/// Truncates and rewrites in place (the inode stays).
fn rewrite_in_place(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(path).expect("open");
    file.write_all(text.as_bytes()).expect("write");
}

/// Reload attempts recorded with `result` (`ok` or `error`).
fn reloads(metrics: &RegistryMetrics, result: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let prefix = format!("registry_reloads_total{{registry=\"file\",result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.parse().expect("a count"))
}

#[test]
fn initial_load_fills_the_store_or_fails() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    assert!(resolves(&f.store, "127.0.0.1:4243"));
    assert_eq!(reloads(&f.metrics, "ok"), 1);

    let mut bad = fixture("services:\n  - name: books\n    ports: []\n", Duration::from_millis(50));
    let err = bad.registry.load_initial().expect_err("invalid");
    assert!(err.to_string().contains("registry.yaml:3:12: service \"books\" has no ports"), "{err}");
    assert_eq!(bad.store.size(), (0, 0));
    assert_eq!(reloads(&bad.metrics, "error"), 1);

    std::fs::remove_file(&bad.path).expect("remove");
    assert!(matches!(bad.registry.load_initial(), Err(FileError::Read { .. })));
}

#[tokio::test]
async fn run_reloads_changes_and_keeps_the_last_good_registry() {
    let Fixture { _dir, path, store, metrics, mut registry } =
        fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    registry.load_initial().expect("valid");
    let (trigger, shutdown) = mesh_core::shutdown::channel();
    let task = tokio::spawn(registry.run(shutdown));

    // A valid change, written the way editors do.
    rename_over(&path, &books("127.0.0.1:4244"));
    assert!(within_a_second(|| resolves(&store, "127.0.0.1:4244")).await, "change not applied");
    assert!(!resolves(&store, "127.0.0.1:4243"));

    // An invalid file: rejected, counted, and the last good registry stays.
    rewrite_in_place(&path, "services:\n  - name: books\n    prots: []\n");
    assert!(within_a_second(|| reloads(&metrics, "error") == 1).await, "rejection not counted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(resolves(&store, "127.0.0.1:4244"));
    assert_eq!(reloads(&metrics, "error"), 1, "a rejected file is reported once");

    // Fixed in place: picked up.
    rewrite_in_place(&path, &books("[::1]:4245"));
    assert!(within_a_second(|| resolves(&store, "[::1]:4245")).await, "fix not applied");
    assert!(!resolves(&store, "127.0.0.1:4244"));

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("run stops on shutdown")
        .expect("run does not panic");
}

#[tokio::test]
async fn run_survives_extreme_poll_intervals() {
    for poll in [Duration::ZERO, Duration::MAX] {
        let Fixture { _dir, registry, .. } = fixture("", poll);
        let (trigger, shutdown) = mesh_core::shutdown::channel();
        let task = tokio::spawn(registry.run(shutdown));
        tokio::time::sleep(Duration::from_millis(20)).await;
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("run stops on shutdown")
            .expect("run does not panic");
    }
}

#[test]
fn a_vanished_file_is_an_error_until_it_returns() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    std::fs::remove_file(&f.path).expect("remove");
    for _ in 0..3 {
        f.registry.poll_once();
    }
    assert!(resolves(&f.store, "127.0.0.1:4243"), "the last good registry stays");
    assert_eq!(reloads(&f.metrics, "error"), 1, "counted once, not every poll");

    // The same content again: valid again, nothing to replace.
    rename_over(&f.path, &books("127.0.0.1:4243"));
    f.registry.poll_once();
    f.registry.poll_once();
    assert_eq!(reloads(&f.metrics, "ok"), 2);

    std::fs::remove_file(&f.path).expect("remove");
    f.registry.poll_once();
    rename_over(&f.path, &books("127.0.0.1:4244"));
    f.registry.poll_once();
    f.registry.poll_once();
    assert!(resolves(&f.store, "127.0.0.1:4244"));
    assert_eq!((reloads(&f.metrics, "ok"), reloads(&f.metrics, "error")), (3, 2));
}

#[test]
fn a_half_written_file_is_not_served() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    // Caught between truncation and write: an empty file is a valid (empty)
    // registry, but it must not replace the one in force on first sight.
    rewrite_in_place(&f.path, "");
    f.registry.poll_once();
    assert!(resolves(&f.store, "127.0.0.1:4243"));
    rewrite_in_place(&f.path, &books("127.0.0.1:4244"));
    f.registry.poll_once();
    f.registry.poll_once();
    assert!(resolves(&f.store, "127.0.0.1:4244"));
    assert_eq!((reloads(&f.metrics, "ok"), reloads(&f.metrics, "error")), (2, 0));
}

#[test]
fn a_rewrite_with_identical_metadata_is_seen() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    let before = std::fs::metadata(&f.path).expect("metadata");
    // Same size, same inode, and the mtime put back: as when two writes land
    // within one tick of the filesystem clock.
    rewrite_in_place(&f.path, &books("127.0.0.1:4244"));
    let file = std::fs::File::options().write(true).open(&f.path).expect("open");
    file.set_modified(before.modified().expect("mtime")).expect("set mtime");
    let after = std::fs::metadata(&f.path).expect("metadata");
    assert_eq!(Stamp::of(&before), Stamp::of(&after), "test premise");

    f.registry.poll_once();
    f.registry.poll_once();
    assert!(resolves(&f.store, "127.0.0.1:4244"));
}

#[test]
fn touching_the_file_does_not_reload_it() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    rename_over(&f.path, &books("127.0.0.1:4243"));
    for _ in 0..3 {
        f.registry.poll_once();
    }
    assert_eq!(reloads(&f.metrics, "ok"), 1, "identical bytes are not loaded again");
    assert!(resolves(&f.store, "127.0.0.1:4243"));
}

#[test]
fn debug_output_omits_content() {
    let f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    let debug = format!("{:?}", f.registry);
    assert!(debug.contains("FileRegistry") && !debug.contains("books"), "{debug}");
}
