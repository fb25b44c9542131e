//! The file registry holds one registry, however often the file changes: a
//! control plane serving a Destination watch through many reloads keeps no
//! old snapshot, index, file content or per-stream copy alive.
//!
//! Heap bytes in use are counted by this test binary's global allocator
//! (its only test, so nothing else allocates meanwhile): a measure of what
//! is kept, not of what the allocator holds on to, so it neither depends on
//! malloc's arenas nor on timing.

use mesh_control::{Config, Control, RegistryConfig};
use mesh_proto::destination::{GetDestination, destination_client::DestinationClient, update};
use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

fn size(layout: Layout) -> isize {
    isize::try_from(layout.size()).unwrap_or(isize::MAX)
}

#[allow(unsafe_code)]
// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds GlobalAlloc's contract; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(size(layout), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(size(layout), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(isize::try_from(new_size).unwrap_or(isize::MAX) - size(layout), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SERVICES: usize = 2_000;
const ENDPOINTS_EACH: usize = 5;
const CHANGES: u32 = 10;

/// A registry of `SERVICES` services; endpoint 0 of every tenth service is
/// at `11.0.x.y` for change `moved` (0: never moved).
fn registry(moved: u32) -> String {
    let mut text = String::from("services:\n");
    for s in 0..SERVICES {
        let _ = write!(text, "  - name: svc-{s}\n    ports: [{{port: 80, protocol: http}}]\n    endpoints:\n");
        for e in 0..ENDPOINTS_EACH {
            let ip = if e == 0 && s % 10 == 0 && moved > 0 {
                moved_ip(moved)
            } else {
                let n = u32::try_from(s * ENDPOINTS_EACH + e).expect("small");
                Ipv4Addr::from(0x0a00_0000 | n)
            };
            let _ = writeln!(text, "      - address: \"{ip}:8080\"");
        }
    }
    text
}

fn moved_ip(change: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0b00_0000 | change)
}

/// Writes `text` as editors do: a new file renamed over the old one.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Reads the stream until an update adds `ip`.
async fn until_added(stream: &mut tonic::Streaming<mesh_proto::destination::Update>, ip: Ipv4Addr) {
    let wanted = ip.octets().to_vec();
    loop {
        let update = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a change reaches the watch")
            .expect("the stream stays up")
            .expect("the stream stays open");
        let endpoints = match update.kind {
            Some(update::Kind::Add(set)) => set.endpoints,
            Some(update::Kind::Snapshot(s)) => s.endpoints,
            _ => continue,
        };
        if endpoints.iter().any(|e| e.address.as_ref().is_some_and(|a| a.ip == wanted)) {
            return;
        }
    }
}

/// Heap bytes in use once the reload that was just seen has finished
/// (its thread drops the parsed snapshot right after notifying).
async fn settled_live() -> isize {
    tokio::time::sleep(Duration::from_millis(300)).await;
    LIVE.load(Ordering::Relaxed)
}

/// Catches a reload that keeps anything per change: old indexes (a store
/// that stacks them, an `Arc` cycle), parsed snapshots or file contents kept
/// by the poller, old answers held by a watch channel or stream. Each would
/// add a registry's worth (here about a megabyte) per change; after ten
/// changes the heap must have grown by less than half of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_reloads_keep_one_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.yaml");
    rename_over(&path, &registry(0));
    let before = LIVE.load(Ordering::Relaxed);

    let mut config = Config::with_file(&path);
    config.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.registry = RegistryConfig::File { path: path.clone(), poll_interval: Duration::from_millis(20) };
    let control = Control::start(config).await.expect("control plane starts");
    let mut client = DestinationClient::connect(format!("http://{}", control.grpc_addr())).await.expect("connects");
    let request = GetDestination { target: "svc-0.default:80".into(), context_workload: String::new() };
    let mut stream = client.get(request).await.expect("watch").into_inner();

    rename_over(&path, &registry(1));
    until_added(&mut stream, moved_ip(1)).await;
    let one = settled_live().await;
    for change in 2..=CHANGES + 1 {
        rename_over(&path, &registry(change));
        until_added(&mut stream, moved_ip(change)).await;
    }
    let many = settled_live().await;

    let registry_cost = one - before;
    let growth = many - one;
    eprintln!("heap: {before} before start, {one} after one change, {many} after {CHANGES} more");
    assert!(registry_cost > 500_000, "test premise: the control plane holds the registry ({registry_cost} bytes)");
    assert!(
        growth < registry_cost / 2,
        "{CHANGES} changes grew the heap by {growth} bytes; one loaded registry costs {registry_cost}"
    );
    drop(stream);
    control.shutdown().await;
}
