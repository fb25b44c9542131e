//! The real binaries, for tests that need separate processes (signals,
//! process memory).

use std::path::PathBuf;

/// Path of a workspace binary (`mesh-proxy`, `mesh-control`, `meshctl`) in
/// the same target directory as the running test.
pub fn path(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-exe> → target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first with `cargo build --workspace --bins` (or run `cargo xtask test`)",
        p.display()
    );
    p
}

/// Peak resident memory (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
