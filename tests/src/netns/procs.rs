//! Commands and processes in namespaces: one-shot commands run to
//! completion, and long-running processes the lab starts, watches, signals
//! and restarts (supervised by `mesh_process`, through `ip netns exec NS`,
//! which execs the command: a child's PID is the workload's own).

use super::Lab;
use mesh_process::{Child, Spec};
use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a lab process gets to exit on SIGTERM at teardown before SIGKILL.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(2);

/// Polls `f` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Output {
    /// Exit status (`None`: killed after the timeout).
    pub status: Option<ExitStatus>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Its exit code (`None`: killed).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?} after {:?}\nstdout: {}\nstderr: {}", self.code(), self.elapsed, self.stdout, self.stderr)
    }
}

/// Runs a command to completion, killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = started.elapsed();
    Output {
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        elapsed,
    }
}

/// Runs `argv` (in the root namespace), panicking unless it succeeds.
pub(super) fn must(argv: &[&str]) -> String {
    let o = run(Command::new(argv[0]).args(&argv[1..]), Duration::from_secs(20));
    assert!(o.success(), "`{}` failed: {o}", argv.join(" "));
    o.stdout
}

/// A process the lab started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId(pub(super) usize);

#[derive(Debug)]
pub(super) struct Proc {
    ns: String,
    /// stdout to the log, stderr to a file of its own; appended on restart.
    spec: Spec,
    pub(super) child: Option<Child>,
}

impl Proc {
    fn name(&self) -> &str {
        self.spec.name()
    }

    /// The file its stdout goes to.
    pub(super) fn out(&self) -> &Path {
        self.spec.log()
    }

    fn child(&self) -> &Child {
        self.child.as_ref().unwrap_or_else(|| panic!("{} is not running", self.name()))
    }
}

impl Lab {
    /// Runs a command inside a pod's namespace to completion.
    pub fn exec(&self, pod: &str, argv: &[&str], timeout: Duration) -> Output {
        let ns = &self.pod(pod).ns;
        run(Command::new("ip").args(["netns", "exec", ns]).args(argv), timeout)
    }

    /// `curl` from a pod (silent, errors shown, 5 s limit) plus `args`.
    pub fn curl(&self, pod: &str, args: &[&str]) -> Output {
        let mut argv = vec!["curl", "-sS", "--max-time", "5"];
        argv.extend_from_slice(args);
        self.exec(pod, &argv, Duration::from_secs(10))
    }

    /// The test app binary's subcommand run in a pod to completion.
    pub fn app_exec(&self, pod: &str, args: &[&str], timeout: Duration) -> Output {
        let mut argv = vec![self.test_app.as_str()];
        argv.extend_from_slice(args);
        self.exec(pod, &argv, timeout)
    }

    /// Starts a long-running process in a namespace; its stdout and stderr
    /// go to files in the lab directory.
    pub(super) fn spawn_ns(&mut self, ns: &str, name: &str, argv: Vec<String>) -> ProcId {
        let logs = self.dir.path().join("logs");
        let idx = self.procs.len();
        let base = format!("{idx:02}-{name}");
        let (program, args) = argv.split_first().expect("a command");
        let spec = Spec::new(name, program, logs.join(format!("{base}.out")))
            .args(args)
            .wrap(["ip", "netns", "exec", ns])
            .stderr_log(logs.join(format!("{base}.log")))
            .append(true)
            .stop_grace(STOP_GRACE);
        let mut p = Proc { ns: ns.into(), spec, child: None };
        start(&mut p);
        self.procs.push(p);
        ProcId(idx)
    }

    /// Starts a test app (`mesh-test-app ARGS`) in a pod and waits until it
    /// listens.
    pub fn start_app(&mut self, pod: &str, name: &str, args: &[&str]) -> ProcId {
        let app = self.test_app.clone();
        let mut argv = vec![app.as_str()];
        argv.extend_from_slice(args);
        let id = self.spawn(pod, name, &argv);
        self.wait_output(id, "listening on", Duration::from_secs(10));
        id
    }

    /// Starts a process in a pod without waiting for anything.
    pub fn spawn(&mut self, pod: &str, name: &str, argv: &[&str]) -> ProcId {
        let ns = self.pod(pod).ns.clone();
        let id = self.spawn_ns(&ns, name, argv.iter().map(|s| s.to_string()).collect());
        self.pods.get_mut(pod).unwrap().apps.push(id);
        id
    }

    /// Waits until a process's stdout or stderr contains `needle`.
    pub fn wait_output(&mut self, id: ProcId, needle: &str, timeout: Duration) {
        let ok = eventually(timeout, || {
            if self.exited(id).is_some() {
                panic!("{} exited before printing {needle:?}:\n{}", self.procs[id.0].name(), self.logs(id));
            }
            self.stdout(id).contains(needle) || self.stderr(id).contains(needle)
        });
        assert!(ok, "{} never printed {needle:?}:\n{}", self.procs[id.0].name(), self.logs(id));
    }

    /// A process's stdout so far.
    pub fn stdout(&self, id: ProcId) -> String {
        fs::read_to_string(self.procs[id.0].out()).unwrap_or_default()
    }

    /// A process's stderr so far.
    pub fn stderr(&self, id: ProcId) -> String {
        self.procs[id.0].spec.get_stderr_log().and_then(|p| fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Both, for messages.
    pub fn logs(&self, id: ProcId) -> String {
        let p = &self.procs[id.0];
        format!(
            "--- {} in {} ({})\n{}{}",
            p.name(),
            p.ns,
            p.spec.command_line(),
            tail(&self.stdout(id), 40),
            tail(&self.stderr(id), 40)
        )
    }

    /// Its exit status, if it has exited (it is reaped as soon as it exits).
    pub fn exited(&mut self, id: ProcId) -> Option<ExitStatus> {
        self.procs[id.0].child.as_ref()?.status()
    }

    /// Its PID while running.
    pub fn pid(&self, id: ProcId) -> Option<u32> {
        self.procs[id.0].child.as_ref().map(Child::pid)
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`...).
    pub fn signal(&mut self, id: ProcId, sig: &str) {
        let signal = mesh_process::signal::by_name(sig).unwrap_or_else(|| panic!("unknown signal {sig}"));
        let p = &self.procs[id.0];
        let sent = p.child().signal(signal).unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", p.name()));
        assert!(sent, "kill -{sig} {}: it has exited", p.name());
    }

    /// Waits for it to exit.
    pub fn wait_exit(&mut self, id: ProcId, timeout: Duration) -> ExitStatus {
        let status = self.procs[id.0].child().wait_timeout(timeout);
        let status = status.unwrap_or_else(|| {
            panic!("{} did not exit within {timeout:?}:\n{}", self.procs[id.0].name(), self.logs(id))
        });
        self.procs[id.0].child = None;
        status
    }

    /// SIGKILLs it and reaps it.
    pub fn kill(&mut self, id: ProcId) {
        stop(&mut self.procs[id.0]);
    }

    /// Starts it again with the same command line (logs are appended).
    pub fn restart(&mut self, id: ProcId) {
        stop(&mut self.procs[id.0]);
        start(&mut self.procs[id.0]);
    }
}

/// Starts it (its logs are appended to). It dies with the thread that
/// starts it: the lab's, which drops the lab first.
pub(super) fn start(p: &mut Proc) {
    let child = Child::spawn(p.spec.clone()).unwrap_or_else(|e| panic!("{e}"));
    p.child = Some(child);
}

/// SIGKILLs it and reaps it.
pub(super) fn stop(p: &mut Proc) {
    if let Some(c) = p.child.take() {
        c.kill();
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].iter().map(|l| format!("{l}\n")).collect()
}
