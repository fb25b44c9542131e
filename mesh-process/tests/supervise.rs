//! The supervisor with real processes (`sh`, `sleep`). Each test names the
//! broken implementation it catches.

#![allow(clippy::unwrap_used)]

use mesh_process::{Child, Spec, Supervisor, block_on, signal};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let dir = std::env::temp_dir().join(format!("mesh-process-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sh(dir: &Path, name: &str, script: &str) -> Spec {
    Spec::new(name, "/bin/sh", dir.join(format!("{name}.log"))).args(["-c", script])
}

/// Runs `f` on another thread, failing the test if it takes longer than
/// `limit` (a broken implementation may hang rather than fail). Children
/// must be started on the test's thread: their parent-death signal is tied
/// to the thread that starts them.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("still waiting after {limit:?}"))
}

/// The process `pid` as `/proc` shows it, if it exists: (state, parent pid).
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Alive: exists and is not a zombie.
fn alive(pid: u32) -> bool {
    proc_state(pid).is_some_and(|(state, _)| state != 'Z')
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn wait_for_log(child: &Child, needle: &str) {
    let found = wait_until(Duration::from_secs(10), || child.log_tail(50).contains(needle));
    assert!(found, "{} never logged {needle:?}: {}", child.name(), child.log_tail(50));
}

/// The child that died is the one named, with its exit status and the end
/// of its log (stdout and stderr), once; a death by signal says which.
/// Catches: reporting the first or any child rather than the one that
/// exited, losing the status or stderr, reporting the same exit twice.
#[test]
fn the_dead_child_is_named_with_its_status_and_log() {
    let dir = temp_dir("exit");
    let mut sup = Supervisor::new();
    sup.spawn(sh(&dir, "sleeper", "exec sleep 600")).unwrap();
    sup.spawn(sh(&dir, "crasher", "echo first; echo boom >&2; exit 3")).unwrap();
    let (mut sup, exited) = within(Duration::from_secs(10), move || {
        let exited = block_on(sup.next_exit());
        (sup, exited)
    });
    assert_eq!((exited.name.as_str(), exited.index), ("crasher", Some(1)));
    assert_eq!(exited.status.code(), Some(3));
    assert_eq!(exited.tail, "first\nboom");
    let message = exited.to_string();
    assert!(message.starts_with("crasher exited unexpectedly (exit status: 3)"), "{message}");
    assert!(message.contains(&dir.join("crasher.log").display().to_string()), "{message}");
    assert!(message.ends_with("    | first\n    | boom"), "{message}");
    assert!(sup.check().is_ok(), "an exit is reported once");
    assert_eq!(sup.running(), 1);

    sup.spawn(sh(&dir, "suicide", "kill -KILL $$")).unwrap();
    let (mut sup, exited) = within(Duration::from_secs(10), move || {
        let exited = block_on(sup.next_exit());
        (sup, exited)
    });
    assert_eq!(exited.name, "suicide");
    assert!(exited.to_string().contains("(signal: 9 (SIGKILL))"), "{exited}");
    assert!(sup.shutdown_blocking(Duration::from_secs(5)).is_empty(), "sleep exits on SIGTERM");
    assert_eq!(sup.running(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// Dropping a child kills and reaps it: no process, not even a zombie, is
/// left with that PID as our child. Catches: kill without wait (a zombie
/// stays), no kill at all (sleep lives on), a supervisor that forgets its
/// children when dropped.
#[test]
fn drop_kills_and_reaps() {
    let dir = temp_dir("drop");
    let ours = std::process::id();
    let left = |pid: u32| proc_state(pid).filter(|&(_, ppid)| ppid == ours);

    let child = Child::spawn(Spec::new("sleeper", "sleep", dir.join("sleeper.log")).arg("600")).unwrap();
    let pid = child.pid();
    assert!(alive(pid));
    within(Duration::from_secs(10), move || drop(child));
    assert_eq!(left(pid), None, "sleep {pid} is left behind");

    let mut sup = Supervisor::new();
    let pids: Vec<u32> = (0..3)
        .map(|i| {
            let i = sup.spawn(sh(&dir, &format!("s{i}"), "exec sleep 600")).unwrap();
            sup.child(i).unwrap().pid()
        })
        .collect();
    assert!(pids.iter().all(|&p| alive(p)));
    within(Duration::from_secs(10), move || drop(sup));
    for pid in pids {
        assert_eq!(left(pid), None, "{pid} is left behind by the supervisor");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A stop asks first (SIGTERM: the child's handler runs) and kills only
/// what ignores it, after the grace period, naming it. Catches: SIGKILL
/// straight away (the handler never runs), waiting forever for a child
/// that ignores SIGTERM, not reporting who needed SIGKILL.
#[test]
fn stop_asks_first_then_kills() {
    let dir = temp_dir("stop");
    let polite =
        Child::spawn(sh(&dir, "polite", "trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done"))
            .unwrap();
    wait_for_log(&polite, "ready");
    let (polite, stopped) = within(Duration::from_secs(10), move || {
        let stopped = polite.stop(Duration::from_secs(5));
        (polite, stopped)
    });
    assert!(!stopped.killed, "{stopped:?}");
    assert_eq!(stopped.status.and_then(|s| s.code()), Some(0));
    assert!(polite.log_tail(5).contains("got TERM"), "{}", polite.log_tail(5));

    let mut sup = Supervisor::new();
    let i = sup.spawn(sh(&dir, "stubborn", "trap '' TERM; echo ready; while :; do sleep 0.05; done")).unwrap();
    sup.spawn(sh(&dir, "quick", "exec sleep 600")).unwrap();
    wait_for_log(sup.child(i).unwrap(), "ready");
    let began = Instant::now();
    let (sup, killed) = within(Duration::from_secs(10), move || {
        let killed = sup.shutdown_blocking(Duration::from_millis(300));
        (sup, killed)
    });
    assert_eq!(killed, vec!["stubborn".to_string()]);
    assert!(began.elapsed() < Duration::from_secs(5), "took {:?}", began.elapsed());
    assert_eq!(sup.running(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// Retired children's exits are expected, not crashes. Catches: a retire
/// that stops a child but still reports its exit.
#[test]
fn retired_children_are_not_crashes() {
    let dir = temp_dir("retire");
    let mut sup = Supervisor::new();
    let a = sup.spawn(sh(&dir, "a", "exec sleep 600")).unwrap();
    sup.spawn(sh(&dir, "b", "sleep 0.5; exit 1")).unwrap();
    let (mut sup, exited) = within(Duration::from_secs(10), move || {
        block_on(sup.retire(&[a], Duration::from_secs(5)));
        let exited = block_on(sup.next_exit());
        (sup, exited)
    });
    assert_eq!(exited.name, "b");
    assert!(sup.check().is_ok());
    sup.shutdown_blocking(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(dir);
}

/// A wrapper (here `env`, as `ip netns exec` or `setpriv`) execs the
/// program: the child's PID is the program's. Stderr may have its own
/// file, and a restarted child may append. Catches: a wrapper put after the
/// program, logs truncated on restart, stderr lost.
#[test]
fn wrappers_exec_the_program_and_logs_are_kept() {
    let dir = temp_dir("wrap");
    let spec = sh(&dir, "wrapped", "echo out=$WRAPPED; echo err >&2; exec sleep 600")
        .wrap(["env", "WRAPPED=yes"])
        .stderr_log(dir.join("wrapped.err"))
        .append(true);
    assert!(spec.command_line().starts_with("env WRAPPED=yes /bin/sh -c"), "{}", spec.command_line());
    for round in 1..=2 {
        let child = Child::spawn(spec.clone()).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || {
                std::fs::read_to_string(format!("/proc/{}/comm", child.pid())).is_ok_and(|c| c.trim() == "sleep")
            }),
            "the child's PID is the program's"
        );
        let out = std::fs::read_to_string(child.log_path()).unwrap();
        assert_eq!(out, "out=yes\n".repeat(round));
        assert_eq!(std::fs::read_to_string(dir.join("wrapped.err")).unwrap(), "err\n".repeat(round));
        child.kill();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// No signal reaches a PID once its child has exited (the PID may be
/// another process's by then). Catches: kill(2) on a stale PID.
#[test]
fn no_signal_after_exit() {
    let dir = temp_dir("late");
    let child = Child::spawn(sh(&dir, "brief", "exit 0")).unwrap();
    let status = within(Duration::from_secs(10), {
        let pid = child.pid();
        move || wait_until(Duration::from_secs(5), || !alive(pid))
    });
    assert!(status);
    assert_eq!(child.wait_timeout(Duration::from_secs(5)).and_then(|s| s.code()), Some(0));
    assert!(!child.signal(signal::SIGTERM).unwrap(), "nothing is sent to an exited child");
    assert!(child.check().is_err());
    let _ = std::fs::remove_dir_all(dir);
}

const HELPER: &str = "MESH_PROCESS_TEST_PIDFILE";

/// Not a test on its own: the middle process of
/// `a_child_dies_with_its_parent` (this test binary run again with
/// [`HELPER`] set). It starts `sleep` through the crate, writes its PID
/// and waits to be killed.
#[test]
fn helper_intermediate() {
    let Some(pidfile) = std::env::var_os(HELPER) else { return };
    let pidfile = PathBuf::from(pidfile);
    let log = pidfile.with_extension("log");
    let child = Child::spawn(Spec::new("grandchild", "sleep", log).arg("600")).unwrap();
    std::fs::write(&pidfile, child.pid().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

/// A child dies with its parent even when the parent is SIGKILLed (no
/// destructor runs): the parent-death signal. Catches: no PR_SET_PDEATHSIG
/// (the grandchild lives on, adopted by init).
#[test]
fn a_child_dies_with_its_parent() {
    let dir = temp_dir("pdeath");
    let pidfile = dir.join("grandchild.pid");
    let exe = std::env::current_exe().unwrap();
    let middle = Child::spawn(
        Spec::new("middle", exe, dir.join("middle.log"))
            .args(["--exact", "helper_intermediate", "--nocapture", "--test-threads", "1"])
            .env(HELPER, &pidfile),
    )
    .unwrap();
    let started =
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&pidfile).is_ok_and(|s| !s.is_empty()));
    assert!(started, "the middle process never started its child: {}", middle.log_tail(20));
    let grandchild: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(alive(grandchild));
    assert_eq!(proc_state(grandchild).map(|(_, ppid)| ppid), Some(middle.pid()));

    middle.kill();
    let died = wait_until(Duration::from_secs(5), || !alive(grandchild));
    if !died {
        let _ = Command::new("kill").args(["-KILL", &grandchild.to_string()]).status();
    }
    assert!(died, "the grandchild {grandchild} outlived its parent");
    let _ = std::fs::remove_dir_all(dir);
}
