//! Child process supervision: start each child with its output in its own
//! log file, notice when one exits, and stop them all (SIGTERM, a grace
//! period, SIGKILL, reap) so that none is left behind.
//!
//! Every child asks the kernel for SIGTERM when meshctl dies
//! (`PR_SET_PDEATHSIG`), so even a SIGKILLed meshctl leaves nothing running.
//! The kernel sends it when the *thread* that forked the child exits; the
//! demo runs on a single-threaded runtime, so that thread is meshctl's main
//! thread. Children also get their own process group, so a Ctrl-C in the
//! terminal reaches only meshctl, which then stops them in order.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::mpsc;

/// What a child is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `mesh-control`.
    Control,
    /// A `mesh-proxy`.
    Proxy,
    /// A demo app (`meshctl demo-app`).
    App,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Control => "control plane",
            Kind::Proxy => "proxy",
            Kind::App => "app",
        })
    }
}

/// How to start one child.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Unique name, e.g. `books-0` (with [`Kind`], names the process).
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Spec {
    /// `books-0 proxy`, `control plane`, ...
    pub fn label(&self) -> String {
        match self.kind {
            Kind::Control => self.kind.to_string(),
            _ => format!("{} {}", self.name, self.kind),
        }
    }
}

/// A child that exited while it was supposed to run.
#[derive(Debug, Clone)]
pub struct Exited {
    /// Its index in the supervisor.
    pub index: usize,
    /// How it was started.
    pub spec: Spec,
    /// How it ended.
    pub status: ExitStatus,
}

impl Exited {
    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.spec.log, n)
    }

    /// Whether it died because a port it was given was taken meanwhile.
    pub fn address_in_use(&self) -> bool {
        // The whole log: a backtrace may follow the error.
        let log = std::fs::read(&self.spec.log).unwrap_or_default();
        let log = String::from_utf8_lossy(&log[log.len().saturating_sub(64 * 1024)..]);
        log.contains("Address already in use") || log.contains("os error 98")
    }
}

/// The last `n` lines of a file, or a note saying why there are none.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            if lines.is_empty() { "(the log is empty)".to_string() } else { lines[start..].join("\n") }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[derive(Debug)]
struct Child {
    spec: Spec,
    pid: u32,
    /// Set by the waiting task in the same poll that reaped the child, so a
    /// pid whose flag is clear has not been recycled.
    exited: Arc<AtomicBool>,
    /// Exits of retired children are expected, not crashes.
    retired: bool,
}

/// Every child of one demo.
#[derive(Debug)]
pub struct Supervisor {
    children: Vec<Child>,
    tx: mpsc::UnboundedSender<(usize, ExitStatus)>,
    rx: mpsc::UnboundedReceiver<(usize, ExitStatus)>,
}

impl Default for Supervisor {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { children: Vec::new(), tx, rx }
    }
}

impl Supervisor {
    /// Starts a child; returns its index.
    pub fn spawn(&mut self, spec: Spec) -> anyhow::Result<usize> {
        let log = File::create(&spec.log)
            .map_err(|e| anyhow::anyhow!("cannot create log file {}: {e}", spec.log.display()))?;
        let log_err = log.try_clone()?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .env("NO_COLOR", "1")
            .process_group(0)
            .kill_on_drop(true);
        if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
            // Errors without backtraces keep a log's last lines readable;
            // panics still follow RUST_BACKTRACE.
            cmd.env("RUST_LIB_BACKTRACE", "0");
        }
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start {}: {e}", spec.program.display()))?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("{} exited at once", spec.label()))?;
        let index = self.children.len();
        let exited = Arc::new(AtomicBool::new(false));
        let (flag, tx) = (exited.clone(), self.tx.clone());
        tokio::spawn(async move {
            let status = child.wait().await;
            flag.store(true, Ordering::SeqCst);
            match status {
                Ok(status) => {
                    let _ = tx.send((index, status));
                }
                Err(e) => tracing::warn!(error = %e, "waiting for a child failed"),
            }
        });
        self.children.push(Child { spec, pid, exited, retired: false });
        Ok(index)
    }

    /// How many children are running.
    pub fn running(&self) -> usize {
        self.children.iter().filter(|c| !c.exited.load(Ordering::SeqCst)).count()
    }

    /// Waits for a child that was not retired to exit.
    pub async fn next_exit(&mut self) -> Exited {
        loop {
            let Some((index, status)) = self.rx.recv().await else {
                // Cannot happen: we hold a sender ourselves.
                std::future::pending::<()>().await;
                continue;
            };
            if let Some(child) = self.children.get(index).filter(|c| !c.retired) {
                return Exited { index, spec: child.spec.clone(), status };
            }
        }
    }

    /// Stops some children (SIGTERM, then SIGKILL after `grace`) and
    /// forgets them: their exits are not reported as crashes.
    pub async fn retire(&mut self, indexes: &[usize], grace: Duration) {
        for &i in indexes {
            if let Some(c) = self.children.get_mut(i) {
                c.retired = true;
            }
        }
        self.stop(indexes, grace).await;
    }

    /// Stops every child: SIGTERM, up to `grace` to exit, then SIGKILL, and
    /// reaps them all. Returns the labels of children that needed SIGKILL.
    pub async fn shutdown(&mut self, grace: Duration) -> Vec<String> {
        for c in &mut self.children {
            c.retired = true;
        }
        let all: Vec<usize> = (0..self.children.len()).collect();
        self.stop(&all, grace).await
    }

    async fn stop(&mut self, indexes: &[usize], grace: Duration) -> Vec<String> {
        let alive = |s: &Self| {
            indexes.iter().filter(|&&i| s.children.get(i).is_some_and(|c| !c.exited.load(Ordering::SeqCst))).count()
        };
        self.signal_all(indexes, libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while alive(self) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stragglers: Vec<String> = indexes
            .iter()
            .filter_map(|&i| self.children.get(i))
            .filter(|c| !c.exited.load(Ordering::SeqCst))
            .map(|c| c.spec.label())
            .collect();
        if !stragglers.is_empty() {
            self.signal_all(indexes, libc::SIGKILL);
            // SIGKILL cannot be caught; reaping follows within moments.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while alive(self) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        stragglers
    }

    fn signal_all(&self, indexes: &[usize], signal: libc::c_int) {
        for c in indexes.iter().filter_map(|&i| self.children.get(i)) {
            if c.exited.load(Ordering::SeqCst) {
                continue;
            }
            if let Err(e) = send_signal(c.pid, signal) {
                tracing::debug!(pid = c.pid, error = %e, "signalling a child failed");
            }
        }
    }
}

/// Sends `signal` to a child of ours that has not been reaped yet.
#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. The
    // pid belongs to an unreaped child (callers check its exited flag on this
    // same thread), so it cannot name a recycled process.
    if unsafe { libc::kill(pid, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the child receive SIGTERM when meshctl dies.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: prctl(2) and getppid(2) are, and
    // nothing here allocates or takes locks (an OS error is a plain integer).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // meshctl may have died before prctl: then nothing would ever tell us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, name: &str, script: &str) -> Spec {
        Spec {
            name: name.to_string(),
            kind: Kind::App,
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".to_string(), script.to_string()],
            log: dir.join(format!("{name}.log")),
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("meshctl-procs-{tag}-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reports_an_exit_with_its_log() {
        let dir = temp_dir("exit");
        let mut sup = Supervisor::default();
        sup.spawn(spec(&dir, "sleeper", "exec sleep 30")).expect("spawn");
        sup.spawn(spec(&dir, "crasher", "echo first; echo boom >&2; exit 3")).expect("spawn");
        let exited = tokio::time::timeout(Duration::from_secs(10), sup.next_exit()).await.expect("an exit");
        assert_eq!(exited.spec.name, "crasher");
        assert_eq!(exited.status.code(), Some(3));
        assert_eq!(exited.log_tail(1), "boom");
        assert_eq!(exited.log_tail(10), "first\nboom");
        assert!(!exited.address_in_use());
        assert_eq!(sup.running(), 1);
        let killed = sup.shutdown(Duration::from_secs(5)).await;
        assert!(killed.is_empty(), "sh exits on SIGTERM: {killed:?}");
        assert_eq!(sup.running(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn kills_what_ignores_sigterm() {
        let dir = temp_dir("kill");
        let mut sup = Supervisor::default();
        sup.spawn(spec(&dir, "stubborn", "trap '' TERM; while true; do sleep 0.05; done")).expect("spawn");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let killed = sup.shutdown(Duration::from_millis(300)).await;
        assert_eq!(killed, vec!["stubborn app".to_string()]);
        assert_eq!(sup.running(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn retired_children_are_not_crashes() {
        let dir = temp_dir("retire");
        let mut sup = Supervisor::default();
        let a = sup.spawn(spec(&dir, "a", "exec sleep 30")).expect("spawn");
        sup.spawn(spec(&dir, "b", "sleep 0.3; exit 1")).expect("spawn");
        sup.retire(&[a], Duration::from_secs(5)).await;
        let exited = tokio::time::timeout(Duration::from_secs(10), sup.next_exit()).await.expect("an exit");
        assert_eq!(exited.spec.name, "b");
        sup.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
