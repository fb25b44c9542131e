//! [`FileRegistry`] watching a file: reloads, rejected files, vanished and
//! half-written files, and the last good policies kept in force.

use super::*;
use crate::store::Store;
use mesh_proto::policy as pb;
use mesh_registry::model::ServiceKey;
use mesh_registry::target::Target;
use mesh_registry::translate::InboundTarget;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// A single-port `books` service with one endpoint at `address`.
fn books(address: &str) -> String {
    format!(
        "services:\n  - name: books\n    ports:\n      - port: 7001\n    endpoints:\n      \
         - address: \"{address}\"\n"
    )
}

/// Books (port 7001 to workload port 8001) and web, followed by `rest`.
fn with(rest: &str) -> String {
    format!(
        "services:\n  - name: books\n    ports: [{{port: 7001, targetPort: 8001}}]\n    endpoints: [{{ip: 10.0.0.5}}]\n\
         \x20 - name: web\n    ports: [{{port: 80}}]\n{rest}"
    )
}

/// A [`FileRegistry`] over `text` in a temporary directory, not loaded yet.
pub(super) struct Fixture {
    pub(super) _dir: tempfile::TempDir,
    pub(super) path: PathBuf,
    pub(super) store: Store,
    pub(super) metrics: RegistryMetrics,
    pub(super) registry: FileRegistry,
}

pub(super) fn fixture(text: &str, poll: Duration) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, text).expect("write");
    let store = Store::new(None);
    let metrics = RegistryMetrics::default();
    let registry = FileRegistry::new(&path, poll, store.clone(), metrics.clone());
    Fixture { _dir: dir, path, store, metrics, registry }
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

// --- Reloading ----------------------------------------------------------------------

#[test]
fn a_rejected_file_keeps_the_last_good_policies() {
    let good = with(
        "routes:
  - name: r
    service: books
    port: 7001
    rules: [{name: all, timeout: 1s}]
authorizations:
  - {name: a, service: books, default: deny}
",
    );
    let Fixture { _dir, path, store, mut registry, .. } = fixture(&good, Duration::from_millis(50));
    registry.load_initial().expect("valid");

    let target: Target = "books.default:7001".parse().expect("target");
    let inbound = InboundTarget::new("default", "books", 8001);
    let before = (store.outbound_policy(&target), store.inbound_policy(&inbound));
    assert_eq!(before.0.routes.len(), 1);
    assert_eq!(before.1.default, pb::DefaultAction::Deny as i32);

    // A route to an unknown backend rejects the whole file: services and
    // policies stay as they were.
    let bad = good
        .replace("{name: all, timeout: 1s}", "{name: all, backends: [{service: gone}]}")
        .replace("  - name: web\n", "  - name: extra\n    ports: [{port: 1}]\n  - name: web\n");
    assert!(
        matches!(mesh_registry::file::parse(Path::new("r.yaml"), &bad), Err(FileError::Invalid { problems, .. }) if problems.len() == 1)
    );
    std::fs::write(&path, &bad).expect("write");
    registry.poll_once();
    registry.poll_once();
    assert_eq!((store.outbound_policy(&target), store.inbound_policy(&inbound)), before);
    assert!(store.index().service(&ServiceKey::new("default", "extra")).is_none());

    let fixed = good.replace("timeout: 1s", "timeout: 2s");
    std::fs::write(&path, &fixed).expect("write");
    registry.poll_once();
    registry.poll_once();
    let timeout = store.outbound_policy(&target).routes[0].timeout.map(|d| d.millis);
    assert_eq!(timeout, Some(2000));
}
