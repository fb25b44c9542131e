//! The file registry's watch: loads the YAML file (parsed and validated by
//! `mesh_registry::file`), then polls it and writes each accepted version
//! into the store; a rejected file leaves the last good registry in force.

use super::heap;
use crate::metrics::RegistryMetrics;
use mesh_core::shutdown::Shutdown;
use mesh_registry::file::{FileError, parse_bytes, read};
use mesh_registry::sink::RegistrySink;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// The registry name used in metrics.
const REGISTRY: &str = "file";
/// Shortest poll interval (the timer refuses a zero period).
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// How long after its modification time a file is re-read on every poll, even
/// when its metadata looks unchanged: two writes within one tick of the
/// filesystem's clock can leave identical mtime, size and inode.
const RACY_WINDOW: Duration = Duration::from_secs(3);
/// How long new content must have stood unmodified before it is applied: a
/// writer pausing for less than this mid-write is never served half a file.
/// Independent of the poll interval: the content is checked again after this
/// delay, not at the next poll.
pub(crate) const SETTLE: Duration = Duration::from_millis(100);

/// Serves a registry file: loads it, then polls for changes.
///
/// A change is recognised by the file's metadata (modification time, size,
/// inode), so an editor's rename-over-write and an in-place rewrite are both
/// seen. New content is applied once it has stood unmodified for [`SETTLE`]
/// (see [`quiet_for`]), so a half-written file (say, truncated and not yet
/// rewritten) is never served; unsettled content is read again when it would
/// have settled, not at the next poll. Parsing a large file takes a while, so
/// polls run on the blocking pool, never on a runtime worker.
pub struct FileRegistry {
    path: PathBuf,
    poll_interval: Duration,
    sink: Box<dyn RegistrySink>,
    metrics: RegistryMetrics,
    watch: WatchState,
}

/// What the poller knows about the file.
#[derive(Default)]
struct WatchState {
    /// Metadata at the last read.
    stamp: Option<Stamp>,
    /// The last read's file was modified so recently that its metadata may not
    /// reveal the next change: read again even if the metadata is unchanged.
    recheck: bool,
    /// New content not settled yet.
    pending: Option<Pending>,
    /// What the last load attempt was about.
    attempted: Attempt,
    /// The content of the registry in force (shared with `attempted`: one copy).
    applied: Option<Arc<Vec<u8>>>,
    /// A parse's memory is free and not yet given back to the OS.
    trim_due: bool,
}

/// New content seen, not applied until it has settled.
struct Pending {
    /// The file's metadata when it was read.
    stamp: Stamp,
    /// When this content was first read with this metadata.
    since: Instant,
    bytes: Vec<u8>,
}

/// How long the content read with `stamp` has provably stood unmodified:
/// since its modification time (if that lies in the past: a write would have
/// moved it), or since the poller first read the same bytes with the same
/// metadata (`seen_for` ago), whichever is longer. The second covers
/// modification times that cannot be trusted (in the future, or missing).
fn quiet_for(modified: Option<SystemTime>, now: SystemTime, seen_for: Duration) -> Duration {
    let since_modified = modified.and_then(|m| now.duration_since(m).ok()).unwrap_or(Duration::ZERO);
    since_modified.max(seen_for)
}

/// The subject of the last load attempt.
#[derive(Default, PartialEq, Eq)]
enum Attempt {
    /// None yet.
    #[default]
    None,
    /// The file could not be read.
    Unreadable,
    /// This content (accepted or rejected).
    Content(Arc<Vec<u8>>),
}

/// File metadata that changes whenever the content may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self { modified: meta.modified().ok(), len: meta.len(), dev: meta.dev(), ino: meta.ino() }
    }

    /// Whether another write could still leave the same stamp.
    fn is_racy(&self) -> bool {
        match self.modified {
            Some(modified) => match SystemTime::now().duration_since(modified) {
                Ok(age) => age < RACY_WINDOW,
                // Modified "in the future": the clocks disagree, trust nothing.
                Err(_) => true,
            },
            None => true,
        }
    }
}

impl fmt::Debug for FileRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRegistry")
            .field("path", &self.path)
            .field("poll_interval", &self.poll_interval)
            .field("stamp", &self.watch.stamp)
            .field("pending", &self.watch.pending.as_ref().map(|p| p.bytes.len()))
            .field("applied", &self.watch.applied.as_ref().map(|b| b.len()))
            .finish_non_exhaustive()
    }
}

impl FileRegistry {
    /// A registry serving `path` into `sink` (the control plane's store),
    /// checking it every `poll_interval`.
    pub fn new(
        path: impl Into<PathBuf>,
        poll_interval: Duration,
        sink: impl RegistrySink + 'static,
        metrics: RegistryMetrics,
    ) -> Self {
        Self { path: path.into(), poll_interval, sink: Box::new(sink), metrics, watch: WatchState::default() }
    }

    /// Loads the file into the store; the control plane refuses to start on error.
    pub fn load_initial(&mut self) -> Result<(), FileError> {
        let result = self
            .read_stamped()
            .and_then(|(stamp, bytes)| parse_bytes(&self.path, &bytes).map(|snapshot| (stamp, bytes, snapshot)));
        let result = match result {
            Ok((stamp, bytes, snapshot)) => {
                let bytes = Arc::new(bytes);
                self.sink.replace_all(&snapshot);
                self.metrics.reload_ok(REGISTRY, &snapshot);
                tracing::info!(
                    path = %self.path.display(),
                    services = snapshot.services.len(),
                    endpoints = snapshot.endpoint_count(),
                    routes = snapshot.routes.len(),
                    authorizations = snapshot.authorizations.len(),
                    "registry loaded"
                );
                self.watch = WatchState {
                    stamp: Some(stamp),
                    recheck: stamp.is_racy(),
                    pending: None,
                    attempted: Attempt::Content(Arc::clone(&bytes)),
                    applied: Some(bytes),
                    trim_due: false,
                };
                Ok(())
            }
            Err(err) => {
                self.metrics.reload_failed(REGISTRY);
                Err(err)
            }
        };
        heap::release_free_memory();
        result
    }

    /// Polls until shutdown; a changed valid file replaces the store's content,
    /// an invalid or missing one is logged (with every problem) and counted,
    /// and the last good registry stays. Each poll runs on the registry's own
    /// thread ([`Poller`]: reading and parsing a 100,000-endpoint file takes
    /// ~0.4 s of CPU), so the runtime keeps serving meanwhile; shutdown waits
    /// for a poll under way.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(self.poll_interval.max(MIN_POLL_INTERVAL));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let path = self.path.clone();
        let poller = match Poller::spawn(self) {
            Ok(poller) => poller,
            Err(err) => {
                tracing::error!(path = %path.display(), "cannot start the registry file's thread: {err}");
                return;
            }
        };
        let mut settle: Option<Duration> = None;
        loop {
            let wake = async {
                match settle {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => drop(ticks.tick().await),
                }
            };
            tokio::select! {
                _ = shutdown.triggered() => break,
                () = wake => {}
            }
            match poller.poll().await {
                Some(next) => settle = next,
                None => {
                    tracing::error!(path = %path.display(), "registry file watch lost: its thread stopped");
                    break;
                }
            }
        }
        poller.stop().await;
        tracing::debug!(path = %path.display(), "registry file watch stopped");
    }

    /// Metadata (taken first, so that a write racing the read shows up as a
    /// change next time) and content.
    fn read_stamped(&self) -> Result<(Stamp, Vec<u8>), FileError> {
        let meta =
            std::fs::metadata(&self.path).map_err(|source| FileError::Read { path: self.path.clone(), source })?;
        Ok((Stamp::of(&meta), read(&self.path)?))
    }

    /// One check of the file: blocking (a stat, and a read and parse when the
    /// file changed). Returns how soon to check again when new content has
    /// not settled yet, `None` to wait for the next poll.
    fn poll_once(&mut self) -> Option<Duration> {
        if std::mem::take(&mut self.watch.trim_due) {
            heap::release_free_memory();
        }
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(source) => return self.unreadable(source),
        };
        let stamp = Stamp::of(&meta);
        let w = &self.watch;
        if w.stamp == Some(stamp) && w.pending.is_none() && !w.recheck {
            return None;
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(source) => return self.unreadable(source),
        };
        // A write racing the read shows in the metadata (its modification
        // time moves unless it too is new): look again once it has settled.
        match std::fs::metadata(&self.path) {
            Ok(after) if Stamp::of(&after) == stamp => {}
            Ok(_) => {
                self.watch.pending = None;
                return Some(SETTLE);
            }
            Err(source) => return self.unreadable(source),
        }
        self.watch.stamp = Some(stamp);
        self.watch.recheck = stamp.is_racy();
        if matches!(&self.watch.attempted, Attempt::Content(last) if **last == bytes) {
            self.watch.pending = None;
            return None;
        }
        let now = Instant::now();
        let since = match self.watch.pending.take() {
            Some(p) if p.stamp == stamp && p.bytes == bytes => p.since,
            _ => now,
        };
        let quiet = quiet_for(stamp.modified, SystemTime::now(), now.duration_since(since));
        if quiet < SETTLE {
            // Possibly half written: look again once it would have settled.
            self.watch.pending = Some(Pending { stamp, since, bytes });
            return Some((SETTLE - quiet).max(MIN_POLL_INTERVAL));
        }
        self.reload(bytes);
        None
    }

    fn reload(&mut self, bytes: Vec<u8>) {
        let bytes = Arc::new(bytes);
        match parse_bytes(&self.path, &bytes) {
            Ok(snapshot) => {
                let unchanged = self.watch.applied.as_ref() == Some(&bytes);
                if !unchanged {
                    self.sink.replace_all(&snapshot);
                    self.watch.applied = Some(Arc::clone(&bytes));
                }
                self.metrics.reload_ok(REGISTRY, &snapshot);
                tracing::info!(
                    path = %self.path.display(),
                    services = snapshot.services.len(),
                    endpoints = snapshot.endpoint_count(),
                    routes = snapshot.routes.len(),
                    authorizations = snapshot.authorizations.len(),
                    unchanged,
                    "registry reloaded"
                );
            }
            Err(err) => {
                self.metrics.reload_failed(REGISTRY);
                tracing::error!(
                    path = %self.path.display(),
                    "registry file rejected, keeping the last good registry:\n{err}"
                );
            }
        }
        self.watch.attempted = Attempt::Content(bytes);
        // The parse's transient peak (and the index it replaced) is free now;
        // it is given back at the next poll, once the watchers' updates are
        // out (a trim takes malloc's locks while they allocate).
        self.watch.trim_due = true;
    }

    /// The file is gone or unreadable: report it once, keep serving the last
    /// good registry, and load the file again once it is back.
    fn unreadable(&mut self, source: std::io::Error) -> Option<Duration> {
        self.watch.stamp = None;
        self.watch.pending = None;
        self.watch.recheck = false;
        if self.watch.attempted == Attempt::Unreadable {
            return None;
        }
        self.watch.attempted = Attempt::Unreadable;
        self.metrics.reload_failed(REGISTRY);
        let err = FileError::Read { path: self.path.clone(), source };
        tracing::error!("{err}; keeping the last good registry");
        None
    }
}

/// The registry's own thread, where every poll (and so every parse) runs.
///
/// Not the runtime's blocking pool: glibc's malloc gives threads their own
/// arenas (up to 8 per core) and keeps what is freed in an arena there, so
/// parses landing on different pool threads each left a parse's peak behind
/// (at 100,000 endpoints: 106 MiB after loading, 343 MiB after ten changes;
/// 179 MiB with `MALLOC_ARENA_MAX=1`). One thread reuses one arena, and
/// [`heap::release_free_memory`] returns its free pages after each parse.
struct Poller {
    /// Each request carries where to send the poll's result.
    requests: std::sync::mpsc::Sender<oneshot::Sender<Option<Duration>>>,
    thread: std::thread::JoinHandle<()>,
}

/// The [`Poller`]'s thread name (seen in `top -H` and panics).
pub(crate) const THREAD_NAME: &str = "registry-file";

impl Poller {
    fn spawn(mut registry: FileRegistry) -> std::io::Result<Self> {
        let (requests, incoming) = std::sync::mpsc::channel::<oneshot::Sender<Option<Duration>>>();
        let thread = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
            for reply in incoming {
                let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| registry.poll_once()))
                    .unwrap_or_else(|_| {
                        tracing::error!(path = %registry.path.display(), "registry file poll panicked; polling on");
                        None
                    });
                // The watch stopped waiting (shutdown): nothing to tell.
                let _ = reply.send(next);
            }
        })?;
        Ok(Self { requests, thread })
    }

    /// One poll on the thread: when to poll again (as `poll_once`), or
    /// `None` when the thread is gone.
    async fn poll(&self) -> Option<Option<Duration>> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(reply).ok()?;
        answer.await.ok()
    }

    /// Ends the thread (after the poll under way, if any) and waits for it.
    async fn stop(self) {
        let Self { requests, thread } = self;
        drop(requests);
        if let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await {
            tracing::error!("the registry file's thread panicked");
        }
    }
}

#[cfg(test)]
mod tests;
