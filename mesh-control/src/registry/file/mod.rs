//! The file registry (universal mode): services, ports, endpoints and their
//! traffic and authorization policies in one YAML file, validated as a whole
//! and reloaded when the file changes.
//!
//! ```yaml
//! services:
//!   - name: books              # DNS label; required
//!     namespace: default       # default "default"
//!     serviceAccount: books    # default: the service name
//!     addresses: [10.96.0.10]  # virtual IPs, optional
//!     ports:                   # at least one
//!       - port: 7001
//!         name: http           # optional
//!         targetPort: 7001     # default: port
//!         protocol: http       # detect (default) | http | http1 | http2 | grpc | opaque | tcp
//!     endpoints:
//!       - address: 127.0.0.1:4243  # ip:port, single-port services only
//!       - ip: 10.0.0.5             # or ip: each port's targetPort applies
//!         weight: 100              # 0..=1000000, default 100; 0 drains
//!         labels: {replica: books-0}
//!     trafficPolicy:           # optional; for clients of this service
//!       circuitBreaker: {consecutiveFailures: 5, baseEjection: 10s, maxEjection: 5m}
//!       limits: {maxConcurrentRequests: 1000, maxPendingRequests: 100, maxConnectionsPerEndpoint: 0}
//!       retryBudget: {ratio: 0.2, minPerSecond: 10, ttl: 10s}
//! routes:                      # outbound, at most one per service port
//!   - name: books-routes
//!     namespace: default       # default "default"; also the target service's
//!     service: books           # the target service
//!     port: 7001               # optional: every port of the service when omitted
//!     rules:                   # first match wins; at least one
//!       - name: canary         # default "rule-<index>"
//!         matches:             # any one; omitted = every request
//!           - path: {prefix: /api}        # or {exact: /x} or {regex: "/v[0-9]+/.*"} (whole path)
//!             headers: [{name: x-canary, exact: "1"}, {name: x-user, regex: "a.*"}]
//!             method: GET
//!             host: books.example
//!             grpc: {service: pkg.Books, method: Get}
//!         backends:            # default: the target itself
//!           - service: books   # namespace: the route's; port: the route's target port
//!             weight: 90       # default 1; the sum must not be 0
//!           - {service: books-v2, namespace: default, port: 7001, weight: 10}
//!         timeout: 2s
//!         retries: {attempts: 2, on: [5xx, gateway-error, connect-failure, reset, unavailable],
//!                   backoff: {base: 25ms, max: 250ms}, perTryTimeout: 1s, bufferLimit: 65536}
//!         faults: {abort: {percent: 10, httpStatus: 503}, delay: {percent: 5, duration: 100ms}}
//!         rateLimit: {requestsPerSecond: 100, burst: 20}
//! authorizations:              # inbound, at most one per workload port
//!   - name: books-authz
//!     namespace: default
//!     service: books           # its workloads (service account) on its target ports
//!     port: 7001               # optional: one service port; all when omitted
//!     default: deny            # deny (default) | allow | authenticated
//!     requireMtls: true        # default false
//!     rules:
//!       - name: allow-web
//!         identities: [spiffe://mesh.local/ns/default/sa/web]
//!         serviceAccounts: [web, shop/cart]   # name (the policy's namespace) or namespace/name
//!         namespaces: [shop]
//!         networks: [10.0.0.0/8]              # unauthenticated clients; a bare IP is a /32
//!         http: [{path: {prefix: /admin}, method: GET}]   # the routes' match schema
//! ```
//!
//! A file is accepted whole or not at all: [`parse`] reports every problem it
//! finds, each with its line and column and naming the object and field, and
//! [`FileRegistry`] keeps the last good registry (services and policies) in
//! force while a rejected file is being fixed.

mod authorizations;
mod check;
mod matches;
mod routes;
mod services;
mod text;
mod traffic;

use crate::metrics::RegistryMetrics;
use crate::registry::model::RegistrySnapshot;
use crate::store::Store;
use check::Checker;
use mesh_core::shutdown::Shutdown;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use text::{parser_problem, to_u32};

#[cfg(test)]
use crate::registry::model::{Endpoint, Protocol, Service, ServiceKey, ServicePort};
#[cfg(test)]
use std::collections::BTreeMap;
#[cfg(test)]
use std::net::{IpAddr, SocketAddr};

/// The registry name used in metrics.
const REGISTRY: &str = "file";
/// Shortest poll interval (the timer refuses a zero period).
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// How long after its modification time a file is re-read on every poll, even
/// when its metadata looks unchanged: two writes within one tick of the
/// filesystem's clock can leave identical mtime, size and inode.
const RACY_WINDOW: Duration = Duration::from_secs(3);

/// One problem in a registry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending text.
    pub line: u32,
    /// 1-based column of the offending text.
    pub column: u32,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Why a registry file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read registry file {}: {source}", .path.display())]
    Read {
        /// The registry file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but is malformed or inconsistent.
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        /// The registry file.
        path: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let path = path.display();
    let lines: Vec<String> = problems.iter().map(|p| format!("{path}:{p}")).collect();
    lines.join("\n")
}

/// Parses and validates a registry file's text; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<RegistrySnapshot, FileError> {
    let invalid = |problems| FileError::Invalid { path: path.to_path_buf(), problems };
    let raw: Option<RawFile> = match serde_saphyr::from_str(text) {
        Ok(raw) => raw,
        Err(err) => return Err(invalid(vec![parser_problem(&err, text)])),
    };
    let raw = raw.unwrap_or_default();
    Checker::check(raw).map_err(invalid)
}

/// Reads and parses a registry file.
pub fn load(path: &Path) -> Result<RegistrySnapshot, FileError> {
    let bytes = read(path)?;
    parse_bytes(path, &bytes)
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Read { path: path.to_path_buf(), source })
}

/// [`parse`] for raw file content, which must be UTF-8.
fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<RegistrySnapshot, FileError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(path, text),
        Err(err) => {
            // Everything before the bad byte is valid text: point at it.
            let valid = String::from_utf8_lossy(bytes.get(..err.valid_up_to()).unwrap_or_default());
            let line = valid.matches('\n').count() + 1;
            let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let problem = Problem {
                line: to_u32(line as u64),
                column: to_u32(column as u64),
                message: format!(
                    "the file is not valid UTF-8 (bad byte at offset {}): save it as UTF-8",
                    err.valid_up_to()
                ),
            };
            Err(FileError::Invalid { path: path.to_path_buf(), problems: vec![problem] })
        }
    }
}

// ---------------------------------------------------------------------------
// The file's shape, as written.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    #[serde(default)]
    services: Option<Vec<Spanned<services::RawService>>>,
    #[serde(default)]
    routes: Option<Vec<Spanned<routes::RawRoutePolicy>>>,
    #[serde(default)]
    authorizations: Option<Vec<Spanned<authorizations::RawAuthorization>>>,
}

// ---------------------------------------------------------------------------
// Watching.

/// Serves a registry file: loads it, then polls for changes.
///
/// A change is recognised by the file's metadata (modification time, size,
/// inode), so an editor's rename-over-write and an in-place rewrite are both
/// seen. New content is applied once two consecutive polls read the same bytes,
/// so a half-written file (say, truncated and not yet rewritten) is never
/// served; a change therefore reaches the store within two poll intervals.
pub struct FileRegistry {
    path: PathBuf,
    poll_interval: Duration,
    store: Store,
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
    /// New content read once, applied if the next poll reads it again.
    pending: Option<Vec<u8>>,
    /// What the last load attempt was about.
    attempted: Attempt,
    /// The content of the registry in force.
    applied: Option<Vec<u8>>,
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
    Content(Vec<u8>),
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
            .field("pending", &self.watch.pending.as_ref().map(Vec::len))
            .field("applied", &self.watch.applied.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl FileRegistry {
    /// A registry serving `path` into `store`, checking it every `poll_interval`.
    pub fn new(path: impl Into<PathBuf>, poll_interval: Duration, store: Store, metrics: RegistryMetrics) -> Self {
        Self { path: path.into(), poll_interval, store, metrics, watch: WatchState::default() }
    }

    /// Loads the file into the store; the control plane refuses to start on error.
    pub fn load_initial(&mut self) -> Result<(), FileError> {
        let result = self
            .read_stamped()
            .and_then(|(stamp, bytes)| parse_bytes(&self.path, &bytes).map(|snapshot| (stamp, bytes, snapshot)));
        match result {
            Ok((stamp, bytes, snapshot)) => {
                self.store.replace_all(&snapshot);
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
                    attempted: Attempt::Content(bytes.clone()),
                    applied: Some(bytes),
                };
                Ok(())
            }
            Err(err) => {
                self.metrics.reload_failed(REGISTRY);
                Err(err)
            }
        }
    }

    /// Polls until shutdown; a changed valid file replaces the store's content,
    /// an invalid or missing one is logged (with every problem) and counted,
    /// and the last good registry stays.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(self.poll_interval.max(MIN_POLL_INTERVAL));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.triggered() => break,
                _ = ticks.tick() => self.poll_once(),
            }
        }
        tracing::debug!(path = %self.path.display(), "registry file watch stopped");
    }

    /// Metadata (taken first, so that a write racing the read shows up as a
    /// change next time) and content.
    fn read_stamped(&self) -> Result<(Stamp, Vec<u8>), FileError> {
        let meta =
            std::fs::metadata(&self.path).map_err(|source| FileError::Read { path: self.path.clone(), source })?;
        Ok((Stamp::of(&meta), read(&self.path)?))
    }

    /// One check of the file. Reads are synchronous: a registry file is small
    /// and local, and a stat every poll costs microseconds.
    fn poll_once(&mut self) {
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(source) => return self.unreadable(source),
        };
        let stamp = Stamp::of(&meta);
        let w = &self.watch;
        if w.stamp == Some(stamp) && w.pending.is_none() && !w.recheck {
            return;
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(source) => return self.unreadable(source),
        };
        self.watch.stamp = Some(stamp);
        self.watch.recheck = stamp.is_racy();
        if matches!(&self.watch.attempted, Attempt::Content(last) if *last == bytes) {
            self.watch.pending = None;
            return;
        }
        if self.watch.pending.as_ref() != Some(&bytes) {
            // First sight of this content: it may be half written.
            self.watch.pending = Some(bytes);
            return;
        }
        self.watch.pending = None;
        self.reload(bytes);
    }

    fn reload(&mut self, bytes: Vec<u8>) {
        match parse_bytes(&self.path, &bytes) {
            Ok(snapshot) => {
                let unchanged = self.watch.applied.as_ref() == Some(&bytes);
                if !unchanged {
                    self.store.replace_all(&snapshot);
                    self.watch.applied = Some(bytes.clone());
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
    }

    /// The file is gone or unreadable: report it once, keep serving the last
    /// good registry, and load the file again once it is back.
    fn unreadable(&mut self, source: std::io::Error) {
        self.watch.stamp = None;
        self.watch.pending = None;
        self.watch.recheck = false;
        if self.watch.attempted == Attempt::Unreadable {
            return;
        }
        self.watch.attempted = Attempt::Unreadable;
        self.metrics.reload_failed(REGISTRY);
        let err = FileError::Read { path: self.path.clone(), source };
        tracing::error!("{err}; keeping the last good registry");
    }
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests_authorizations;
#[cfg(test)]
mod tests_parse;
#[cfg(test)]
mod tests_routes;
#[cfg(test)]
mod tests_services;
#[cfg(test)]
mod tests_watch;
