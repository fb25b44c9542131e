//! One supervised child: started with a parent-death signal and a log file,
//! reaped by a thread of its own the moment it exits, stopped gracefully
//! when dropped.

use crate::signal::{SIGKILL, SIGTERM, c_int};
use crate::wait::{Timer, block_on};
use crate::{Error, Spec, log_tail, sys};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long reaping may take after SIGKILL (which cannot be caught).
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Lines of the log an [`Exited`] shows.
const TAIL_LINES: usize = 15;

/// A running (or exited, not yet dropped) child process.
#[derive(Debug)]
pub struct Child {
    spec: Spec,
    pid: u32,
    shared: Arc<Shared>,
    reaper: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    child: std::process::Child,
    /// Set by the reaper thread in the same critical section that reaped the
    /// child: while it is `None` under the lock, the PID is still ours.
    status: Option<ExitStatus>,
    /// Futures waiting for the exit, by waiter id.
    waiters: Vec<(u64, Waker)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

static NEXT_WAITER: AtomicU64 = AtomicU64::new(1);

/// A fresh id for a future registering wakers with children.
pub(crate) fn waiter_id() -> u64 {
    NEXT_WAITER.fetch_add(1, Ordering::Relaxed)
}

fn open_log(spec: &Spec, path: &Path) -> Result<File, Error> {
    let mut options = OpenOptions::new();
    options.create(true);
    if spec.append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    options.open(path).map_err(|source| Error::Log { name: spec.name.clone(), path: path.to_path_buf(), source })
}

impl Child {
    /// Starts a child as `spec` says.
    ///
    /// The parent-death signal is tied to the calling *thread*: the kernel
    /// sends it when this thread exits. Start children from a thread that
    /// lives as long as they should (the main thread, a single-threaded
    /// runtime's thread, a test's thread).
    pub fn spawn(spec: Spec) -> Result<Self, Error> {
        let out = open_log(&spec, &spec.log)?;
        let err = match &spec.stderr_log {
            Some(path) => open_log(&spec, path)?,
            None => out.try_clone().map_err(|source| Error::Log {
                name: spec.name.clone(),
                path: spec.log.clone(),
                source,
            })?,
        };
        let mut words = spec.wrapper.iter().cloned().chain([spec.program.clone().into_os_string()]);
        let program = words.next().unwrap_or_default();
        let mut cmd = Command::new(&program);
        cmd.args(words).args(&spec.args).envs(spec.envs.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if spec.process_group {
            cmd.process_group(0);
        }
        sys::die_with_parent(&mut cmd, spec.death_signal);
        let spawn_error = |source| Error::Spawn { name: spec.name.clone(), program: PathBuf::from(&program), source };
        let child = cmd.spawn().map_err(spawn_error)?;
        let pid = child.id();
        let shared = Arc::new(Shared { state: Mutex::new(State { child, status: None, waiters: Vec::new() }) });
        let theirs = shared.clone();
        let reaper = std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .stack_size(64 * 1024)
            .spawn(move || reap(pid, &theirs));
        match reaper {
            Ok(reaper) => Ok(Self { spec, pid, shared, reaper: Some(reaper) }),
            Err(source) => {
                let mut state = shared.lock();
                let _ = state.child.kill();
                let _ = state.child.wait();
                drop(state);
                Err(spawn_error(source))
            }
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its process id (the program's own: a wrapper execs it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How it was started.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.spec.log, n)
    }

    /// How it ended, if it has (never blocks).
    pub fn status(&self) -> Option<ExitStatus> {
        self.shared.lock().status
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.status().is_none()
    }

    /// `Err` naming it, with its status and the end of its log, once it has exited.
    pub fn check(&self) -> Result<(), Exited> {
        match self.status() {
            None => Ok(()),
            Some(status) => Err(Exited::new(self, status, None)),
        }
    }

    /// Sends `signal`; `Ok(false)` when it has already exited (nothing is
    /// sent: its PID may belong to another process by now).
    pub fn signal(&self, signal: c_int) -> io::Result<bool> {
        let state = self.shared.lock();
        if state.status.is_some() {
            return Ok(false);
        }
        // Under the lock the reaper cannot reap it, so the PID is still ours.
        sys::send_signal(self.pid, signal)?;
        Ok(true)
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        block_on(WaitAll::new(&[self], Some(Instant::now() + timeout)));
        self.status()
    }

    /// Waits for it to exit.
    pub fn wait(&self) -> ExitStatus {
        loop {
            block_on(WaitAll::new(&[self], None));
            if let Some(status) = self.status() {
                return status;
            }
        }
    }

    /// Resolves when it has exited, with its status.
    pub async fn exited(&self) -> ExitStatus {
        loop {
            WaitAll::new(&[self], None).await;
            if let Some(status) = self.status() {
                return status;
            }
        }
    }

    /// Stops it: SIGTERM, up to `grace` to exit, then SIGKILL; reaped either way.
    pub fn stop(&self, grace: Duration) -> Stopped {
        let killed = !block_on(stop_all(&[self], grace)).is_empty();
        Stopped { status: self.status(), killed }
    }

    /// SIGKILL, and waits for it to be reaped.
    pub fn kill(&self) -> Option<ExitStatus> {
        let _ = self.signal(SIGKILL);
        self.wait_timeout(KILL_WAIT)
    }

    /// The exit status if exited; otherwise registers `waker` under `id`.
    pub(crate) fn poll_exit(&self, id: u64, waker: &Waker) -> Option<ExitStatus> {
        let mut state = self.shared.lock();
        if state.status.is_some() {
            return state.status;
        }
        match state.waiters.iter_mut().find(|(i, _)| *i == id) {
            Some((_, w)) => w.clone_from(waker),
            None => state.waiters.push((id, waker.clone())),
        }
        None
    }

    /// Forgets waiter `id`.
    pub(crate) fn unregister(&self, id: u64) {
        self.shared.lock().waiters.retain(|(i, _)| *i != id);
    }
}

/// The reaper thread: waits for the exit without reaping, then reaps and
/// records the status in one critical section, and wakes the waiters.
fn reap(pid: u32, shared: &Shared) {
    // An error here (ECHILD: someone else reaped it) falls through to wait(),
    // which then fails too.
    let _ = sys::wait_exited_unreaped(pid);
    let mut state = shared.lock();
    let status = match state.child.wait() {
        Ok(status) => status,
        // The status is lost; report exit code 255 rather than nothing.
        Err(_) => ExitStatus::from_raw(255 << 8),
    };
    state.status = Some(status);
    let waiters = std::mem::take(&mut state.waiters);
    drop(state);
    for (_, w) in waiters {
        w.wake();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.is_running() {
            self.stop(self.spec.stop_grace);
        }
        // Joined only once reaped: a process stuck in the kernel even after
        // SIGKILL leaves its reaper thread behind rather than hang us.
        if !self.is_running() {
            if let Some(reaper) = self.reaper.take() {
                let _ = reaper.join();
            }
        }
    }
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// The exit status (`None`: not even SIGKILL got it reaped in time).
    pub status: Option<ExitStatus>,
    /// Whether it needed SIGKILL.
    pub killed: bool,
}

/// A child that exited when it should not have: its name, exit status and
/// the end of its log. Its `Display` is the message to show.
#[derive(Debug, Clone)]
pub struct Exited {
    /// Its index in the [`Supervisor`](crate::Supervisor), if it has one.
    pub index: Option<usize>,
    /// Its name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
    /// Its log file.
    pub log: PathBuf,
    /// Its stderr's file, when separate from the log.
    pub stderr_log: Option<PathBuf>,
    /// The last lines of its log(s) when the exit was noticed.
    pub tail: String,
}

impl Exited {
    pub(crate) fn new(child: &Child, status: ExitStatus, index: Option<usize>) -> Self {
        let spec = child.spec();
        let mut tail = log_tail(&spec.log, TAIL_LINES);
        if let Some(stderr) = &spec.stderr_log {
            tail = format!("{tail}\n(stderr, {}:)\n{}", stderr.display(), log_tail(stderr, TAIL_LINES));
        }
        Self {
            index,
            name: spec.name.clone(),
            pid: child.pid,
            status,
            log: spec.log.clone(),
            stderr_log: spec.stderr_log.clone(),
            tail,
        }
    }

    /// The last `n` lines of its log, read now.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

impl fmt::Display for Exited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} exited unexpectedly ({})\n  log: {}\n  last lines:", self.name, self.status, self.log.display())?;
        for line in self.tail.lines() {
            write!(f, "\n    | {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Exited {}

/// Resolves when every child has exited (`true`) or at the deadline (`false`).
pub(crate) struct WaitAll<'a> {
    children: Vec<&'a Child>,
    timer: Option<Timer>,
    id: u64,
}

impl<'a> WaitAll<'a> {
    pub(crate) fn new(children: &[&'a Child], deadline: Option<Instant>) -> Self {
        Self { children: children.to_vec(), timer: deadline.map(Timer::new), id: waiter_id() }
    }
}

impl Future for WaitAll<'_> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let this = self.get_mut();
        let mut all = true;
        for c in &this.children {
            all &= c.poll_exit(this.id, cx.waker()).is_some();
        }
        if all {
            return Poll::Ready(true);
        }
        let expired = this.timer.as_mut().is_some_and(|t| t.poll_expired(cx));
        if expired { Poll::Ready(false) } else { Poll::Pending }
    }
}

impl Drop for WaitAll<'_> {
    fn drop(&mut self) {
        for c in &self.children {
            c.unregister(self.id);
        }
    }
}

/// Stops children together: SIGTERM to all, up to `grace` for all to exit,
/// then SIGKILL to the rest, and waits for them to be reaped. Returns the
/// positions (in `children`) of those that needed SIGKILL.
pub(crate) async fn stop_all(children: &[&Child], grace: Duration) -> Vec<usize> {
    for c in children {
        let _ = c.signal(SIGTERM);
    }
    if WaitAll::new(children, Some(Instant::now() + grace)).await {
        return Vec::new();
    }
    let stragglers: Vec<usize> = (0..children.len()).filter(|&i| children[i].is_running()).collect();
    for &i in &stragglers {
        let _ = children[i].signal(SIGKILL);
    }
    WaitAll::new(children, Some(Instant::now() + KILL_WAIT)).await;
    stragglers
}
