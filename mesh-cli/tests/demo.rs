//! End to end: the real `meshctl demo`, with the real control plane and
//! proxies, on loopback. Needs `mesh-proxy` and `mesh-control` built beside
//! meshctl: run `cargo build --workspace --bins` first.

mod support;

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use support::Demo;

/// One demo at a time: each starts 14 processes on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn assert_nothing_left(dir: &Path) {
    let left = processes_mentioning(&dir.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits");
    // SAFETY: kill(2) takes plain integers; the pid is a live process we found or started.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
}

/// The summary table's row for `service`: (rps, success %, mTLS %).
fn summary_row(out: &str, service: &str) -> (f64, f64, f64) {
    let summary = &out[out.rfind("summary:").unwrap_or_else(|| panic!("no summary in:\n{out}"))..];
    let line = summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(service))
        .unwrap_or_else(|| panic!("no {service} row in:\n{summary}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells.get(1), Some(&"2/2"), "replicas up in {line:?}");
    let rps: f64 = cells[2].parse().expect("req/s is a number");
    let success: f64 = cells[3].trim_end_matches('%').parse().expect("success is a percentage");
    let mtls: f64 = cells[6].trim_end_matches('%').parse().expect("mTLS is a percentage");
    (rps, success, mtls)
}

#[test]
fn demo_runs_for_its_duration_and_cleans_up() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut demo = Demo::start(&["--duration", "6s", "--interval", "2s", "--rps", "40"]);
    let dir = demo.run_dir();
    let (status, out, err) = demo.finish(Duration::from_secs(60));
    assert!(status.success(), "exit {status}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.matches("REQ/S").count() >= 3, "live tables and a summary:\n{out}");
    assert!(out.contains("identity: CA for trust domain demo.mesh"), "{out}");
    for service in ["web", "books", "authors"] {
        let (rps, success, mtls) = summary_row(&out, service);
        assert!(rps > 0.0, "{service}: {rps} req/s\n{out}");
        assert!(success > 90.0, "{service}: {success}% success\n{out}");
        assert_eq!(mtls, 100.0, "{service}: all meshed traffic is mTLS\n{out}");
    }
    assert_nothing_left(&dir);
    assert!(!dir.exists(), "{} is removed without --keep-logs", dir.display());
}

#[test]
fn no_identity_runs_in_plaintext() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut demo = Demo::start(&["--no-identity", "--duration", "3s", "--interval", "1s", "--rps", "40"]);
    let dir = demo.run_dir();
    let (status, out, err) = demo.finish(Duration::from_secs(60));
    assert!(status.success(), "exit {status}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("identity: off"), "{out}");
    for service in ["web", "books", "authors"] {
        let (rps, _, mtls) = summary_row(&out, service);
        assert!(rps > 0.0, "{service}: {rps} req/s\n{out}");
        assert_eq!(mtls, 0.0, "{service}: plaintext\n{out}");
    }
    assert_nothing_left(&dir);
}

#[test]
fn sigint_stops_the_demo_cleanly() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut demo = Demo::start(&["--interval", "1s", "--rps", "40"]);
    let dir = demo.run_dir();
    demo.line_with("SUCCESS", Duration::from_secs(40));
    assert!(processes_mentioning(&dir.display().to_string()).len() >= 13, "the mesh is running");
    assert!(demo.child.signal(libc::SIGINT).expect("SIGINT meshctl"), "meshctl is running");
    let (status, out, err) = demo.finish(Duration::from_secs(30));
    assert!(status.success(), "exit {status}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("stopped by SIGINT"), "{out}");
    assert_nothing_left(&dir);
}

#[test]
fn a_crashed_child_fails_the_demo_by_name() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut demo = Demo::start(&["--interval", "1s", "--rps", "40"]);
    let dir = demo.run_dir();
    demo.line_with("SUCCESS", Duration::from_secs(40));
    let victims: Vec<(u32, String)> = processes_mentioning(&dir.display().to_string())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(" demo-app ") && cmd.contains("--name books-0 "))
        .collect();
    assert_eq!(victims.len(), 1, "one books-0 app: {victims:#?}");
    signal(victims[0].0, libc::SIGKILL);
    let (status, out, err) = demo.finish(Duration::from_secs(30));
    assert!(!status.success(), "a crash fails the demo\nstdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("books-0 app exited unexpectedly"), "{err}");
    assert!(err.contains("SIGKILL"), "the exit status is shown: {err}");
    assert!(err.contains(&dir.join("logs").join("books-0.log").display().to_string()), "the log is named: {err}");
    assert_nothing_left(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}
