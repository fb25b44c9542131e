//! What the end-to-end suites share: the built `meshctl` and a running
//! `meshctl demo` (supervised by `mesh_process`) whose output is collected
//! as it comes.
// Each suite is its own crate and uses a part of this module.
#![allow(dead_code)]

use mesh_process::{Child, Spec};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// The meshctl binary under test.
pub fn meshctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshctl"))
}

/// Fails with the command to run when the demo's binaries are not built.
pub fn require_binaries() {
    let exe = meshctl();
    let dir = exe.parent().expect("meshctl has a directory");
    for name in ["mesh-proxy", "mesh-control"] {
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "{} is missing: the demo runs the mesh's binaries from meshctl's directory. \
             Run `cargo build --workspace --bins` first, then `cargo test -p mesh-cli`.",
            path.display()
        );
    }
}

/// A running `meshctl demo`, its stdout and stderr in files as they come.
/// Dropped (a test failed before it ended), it gets SIGTERM, so that it stops
/// its mesh, and SIGKILL if it does not exit in time.
pub struct Demo {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Starts `meshctl demo args…`.
    pub fn start(args: &[&str]) -> Demo {
        require_binaries();
        let dir = tempfile::Builder::new().prefix("meshctl-test-").tempdir().expect("temp dir");
        let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let spec = Spec::new("meshctl demo", meshctl(), &stdout)
            .stderr_log(&stderr)
            .arg("demo")
            .args(args)
            .stop_grace(Duration::from_secs(20));
        let child = Child::spawn(spec).expect("start meshctl demo");
        Demo { child, stdout, stderr, _dir: dir }
    }

    /// Everything printed to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything printed to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The first stdout line containing `needle`, waiting for it.
    pub fn line_with(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stdout().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Some(status) = self.child.status() {
                panic!("meshctl exited ({status}) before printing {needle:?}\n{}\n{}", self.stdout(), self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}:\n{}\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The run directory, as announced at start.
    pub fn run_dir(&mut self) -> PathBuf {
        self.line_with("logs: ", Duration::from_secs(10));
        let out = self.stdout();
        let line = out.lines().find(|l| l.starts_with("logs: ")).expect("the log directory is printed");
        let logs = line["logs: ".len()..].split_whitespace().next().expect("a path");
        let dir = Path::new(logs).parent().expect("logs sit in the run directory").to_path_buf();
        assert!(dir.display().to_string().contains("meshctl-demo-"), "{}", dir.display());
        dir
    }

    /// Waits for meshctl to exit; kills it after `timeout`.
    pub fn finish(self, timeout: Duration) -> (ExitStatus, String, String) {
        match self.child.wait_timeout(timeout) {
            Some(status) => (status, self.stdout(), self.stderr()),
            None => {
                self.child.kill();
                panic!("meshctl did not exit within {timeout:?}\n{}\n{}", self.stdout(), self.stderr());
            }
        }
    }
}
