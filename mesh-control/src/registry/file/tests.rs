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

/// Waits up to 5 s for `check` to hold: the registry polls every 50 ms, so
/// a change shows within milliseconds; the rest is room for a loaded
/// machine (a change never picked up fails at any wait).
async fn soon(check: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
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

/// Polls as `run` does: again after each settle delay asked for, until none is.
fn poll_settled(registry: &mut FileRegistry) {
    for _ in 0..10 {
        match registry.poll_once() {
            Some(delay) => std::thread::sleep(delay),
            None => return,
        }
    }
    panic!("the file never settled");
}

/// Moves the file's modification time `by` into the past (or the future).
fn shift_mtime(path: &Path, by: Duration, past: bool) {
    let now = SystemTime::now();
    let when = if past { now - by } else { now + by };
    let file = std::fs::File::options().write(true).open(path).expect("open");
    file.set_modified(when).expect("set mtime");
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
    assert!(soon(|| resolves(&store, "127.0.0.1:4244")).await, "change not applied");
    assert!(!resolves(&store, "127.0.0.1:4243"));

    // An invalid file: rejected, counted, and the last good registry stays.
    rewrite_in_place(&path, "services:\n  - name: books\n    prots: []\n");
    assert!(soon(|| reloads(&metrics, "error") == 1).await, "rejection not counted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(resolves(&store, "127.0.0.1:4244"));
    assert_eq!(reloads(&metrics, "error"), 1, "a rejected file is reported once");

    // Fixed in place: picked up.
    rewrite_in_place(&path, &books("[::1]:4245"));
    assert!(soon(|| resolves(&store, "[::1]:4245")).await, "fix not applied");
    assert!(!resolves(&store, "127.0.0.1:4244"));

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("run stops on shutdown")
        .expect("run does not panic");
}

/// The threads that replaced a store's content: id and name.
type Threads = std::sync::Arc<std::sync::Mutex<Vec<(std::thread::ThreadId, Option<String>)>>>;

/// A store that notes which thread replaced its content.
struct Recording {
    store: Store,
    threads: Threads,
}

impl RegistrySink for Recording {
    fn replace_all(&self, snapshot: &mesh_registry::model::RegistrySnapshot) {
        let thread = std::thread::current();
        self.threads.lock().expect("lock").push((thread.id(), thread.name().map(str::to_string)));
        self.store.replace_all(snapshot);
    }
    fn upsert(&self, service: mesh_registry::model::Service) {
        self.store.upsert(service);
    }
    fn remove(&self, key: &ServiceKey) {
        self.store.remove(key);
    }
    fn replace_policies(
        &self,
        routes: Vec<mesh_registry::model::RoutePolicy>,
        authorizations: Vec<mesh_registry::model::AuthorizationPolicy>,
    ) {
        self.store.replace_policies(routes, authorizations);
    }
}

/// Catches a watch that reads and parses on the runtime's thread (a large
/// file then stalls every stream the runtime serves for the whole parse),
/// and one that parses wherever the blocking pool puts it: each pool thread
/// would get a malloc arena of its own and keep a parse's peak in it. Every
/// reload must run on the registry's one thread.
#[tokio::test(flavor = "current_thread")]
async fn run_reloads_on_the_registry_thread_only() {
    let Fixture { _dir, path, store, metrics, .. } = fixture(&books("127.0.0.1:4243"), Duration::from_millis(20));
    let threads = std::sync::Arc::default();
    let sink = Recording { store: store.clone(), threads: std::sync::Arc::clone(&threads) };
    let mut registry = FileRegistry::new(&path, Duration::from_millis(20), sink, metrics);
    registry.load_initial().expect("valid");
    let runtime_thread = std::thread::current().id();
    assert_eq!(threads.lock().expect("lock")[0].0, runtime_thread, "test premise: the initial load is inline");
    let (trigger, shutdown) = mesh_core::shutdown::channel();
    let task = tokio::spawn(registry.run(shutdown));
    for port in 4244..4248 {
        let address = format!("127.0.0.1:{port}");
        rename_over(&path, &books(&address));
        assert!(soon(|| resolves(&store, &address)).await, "change to {address} not applied");
        // Keep a blocking-pool thread busy: a reload sent to the pool would
        // now land on another thread.
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(50)));
    }
    let seen = threads.lock().expect("lock").clone();
    assert_eq!(seen.len(), 5);
    let reloads = &seen[1..];
    assert!(reloads.iter().all(|(id, _)| *id != runtime_thread), "reloaded on the runtime's thread");
    assert!(reloads.iter().all(|(id, _)| *id == reloads[0].0), "reloads on several threads: {reloads:?}");
    assert_eq!(reloads[0].1.as_deref(), Some(THREAD_NAME), "reloaded off the registry's thread");
    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(1), task).await.expect("run stops").expect("no panic");
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
    poll_settled(&mut f.registry);
    assert_eq!(reloads(&f.metrics, "ok"), 2);

    std::fs::remove_file(&f.path).expect("remove");
    f.registry.poll_once();
    rename_over(&f.path, &books("127.0.0.1:4244"));
    poll_settled(&mut f.registry);
    assert!(resolves(&f.store, "127.0.0.1:4244"));
    assert_eq!((reloads(&f.metrics, "ok"), reloads(&f.metrics, "error")), (3, 2));
}

/// Catches a settle rule that serves content read twice a few milliseconds
/// apart (or just twice) while the file is still being written.
#[test]
fn a_half_written_file_is_not_served() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    // Caught between truncation and write: an empty file is a valid (empty)
    // registry, but it must not replace the one in force before it settles.
    rewrite_in_place(&f.path, "");
    let delay = f.registry.poll_once().expect("a settle delay");
    assert!(delay <= SETTLE, "{delay:?}");
    f.registry.poll_once();
    std::thread::sleep(Duration::from_millis(5));
    f.registry.poll_once();
    assert!(resolves(&f.store, "127.0.0.1:4243"), "served before it settled");
    rewrite_in_place(&f.path, &books("127.0.0.1:4244"));
    poll_settled(&mut f.registry);
    assert!(resolves(&f.store, "127.0.0.1:4244"));
    assert_eq!((reloads(&f.metrics, "ok"), reloads(&f.metrics, "error")), (2, 0));

    // Left empty: once it has stood for the settle time, it is what is meant.
    rewrite_in_place(&f.path, "");
    poll_settled(&mut f.registry);
    assert_eq!(f.store.size(), (0, 0));
}

/// Catches a watch that waits for a settle delay (or a second poll) even when
/// the file's modification time shows it has not been written for a while:
/// a renamed-over file is then applied one poll later than it could be.
#[test]
fn a_file_unmodified_for_the_settle_time_is_applied_on_first_sight() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    let tmp = f.path.with_extension("yaml.tmp");
    std::fs::write(&tmp, books("127.0.0.1:4244")).expect("write");
    shift_mtime(&tmp, SETTLE, true);
    std::fs::rename(&tmp, &f.path).expect("rename over");
    assert_eq!(f.registry.poll_once(), None);
    assert!(resolves(&f.store, "127.0.0.1:4244"));
}

/// Catches a watch that takes a modification time in the future as "long
/// unmodified" (applying at once), or one that never applies such a file:
/// then two reads a settle time apart must agree.
#[test]
fn a_file_modified_in_the_future_is_applied_once_two_reads_agree() {
    let mut f = fixture(&books("127.0.0.1:4243"), Duration::from_millis(50));
    f.registry.load_initial().expect("valid");
    rewrite_in_place(&f.path, &books("127.0.0.1:4244"));
    shift_mtime(&f.path, Duration::from_secs(3600), false);
    assert!(f.registry.poll_once().is_some());
    f.registry.poll_once();
    assert!(resolves(&f.store, "127.0.0.1:4243"), "applied on the strength of a future mtime");
    poll_settled(&mut f.registry);
    assert!(resolves(&f.store, "127.0.0.1:4244"));
}

#[test]
fn quiet_time_is_the_longer_of_mtime_age_and_time_seen() {
    let now = SystemTime::now();
    let s = Duration::from_secs;
    assert_eq!(quiet_for(Some(now - s(5)), now, s(1)), s(5));
    assert_eq!(quiet_for(Some(now - s(1)), now, s(2)), s(2));
    assert_eq!(quiet_for(Some(now + s(60)), now, s(1)), s(1), "a future mtime proves nothing");
    assert_eq!(quiet_for(None, now, Duration::ZERO), Duration::ZERO);
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

    poll_settled(&mut f.registry);
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
    poll_settled(&mut registry);
    assert_eq!((store.outbound_policy(&target), store.inbound_policy(&inbound)), before);
    assert!(store.index().service(&ServiceKey::new("default", "extra")).is_none());

    let fixed = good.replace("timeout: 1s", "timeout: 2s");
    std::fs::write(&path, &fixed).expect("write");
    poll_settled(&mut registry);
    let timeout = store.outbound_policy(&target).routes[0].timeout.map(|d| d.millis);
    assert_eq!(timeout, Some(2000));
}
