//! What the end-to-end suites share: the built `meshctl` and a running
//! `meshctl demo` whose output is collected as it comes.
// Each suite is its own crate and uses a part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
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

/// A running `meshctl demo`; killed if the test fails before it ends.
pub struct Demo {
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut s = sink.lock().unwrap_or_else(PoisonError::into_inner);
            s.push_str(&line);
            s.push('\n');
        }
    });
    text
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Demo {
    /// Starts `meshctl demo args…`.
    pub fn start(args: &[&str]) -> Demo {
        require_binaries();
        let mut child = Command::new(meshctl())
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start meshctl demo");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Demo { child, stdout, stderr }
    }

    /// Everything printed to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Everything printed to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The first stdout line containing `needle`, waiting for it.
    pub fn line_with(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stdout().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
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
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for meshctl") {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(200));
                return (status, self.stdout(), self.stderr());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("meshctl did not exit within {timeout:?}\n{}\n{}", self.stdout(), self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
