//! Child processes (supervised by `mesh_process`: they die with xtask and
//! are stopped when dropped), loopback ports, a tiny HTTP/1.0 client for
//! admin endpoints, and per-process CPU, memory and descriptors from `/proc`.

use anyhow::{Context, bail};
use mesh_process::{Child, Spec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Kernel clock ticks per second for `/proc/PID/stat` times (`USER_HZ`, 100
/// on every Linux architecture we run on).
pub const CLK_TCK: u64 = 100;

/// How long a bench process gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Starts `program ARGS...` (with `envs`) as a supervised child, logging to
/// `<log_dir>/<name>.log`. It dies with xtask (even a killed one) and is
/// stopped (SIGTERM, then SIGKILL) and reaped when dropped.
pub fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    envs: &[(&str, &str)],
    log_dir: &Path,
) -> anyhow::Result<Child> {
    let mut spec = Spec::new(name, program, log_dir.join(format!("{name}.log"))).args(args).stop_grace(STOP_GRACE);
    for (k, v) in envs {
        spec = spec.env(k, v);
    }
    Ok(Child::spawn(spec)?)
}

/// A command for a one-shot `program` (run to completion) that is killed
/// when xtask dies.
pub fn command(program: &Path) -> Command {
    let mut c = Command::new(program);
    mesh_process::die_with_parent(&mut c, mesh_process::signal::SIGKILL);
    c
}

/// A scratch directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory `<prefix>-<pid>` under the system's temp dir,
    /// first removing those left by earlier runs that were killed.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let tmp = std::env::temp_dir();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(prefix)?.strip_prefix('-')?.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let path = tmp.join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` distinct free TCP ports on 127.0.0.1 (free when probed; children bind
/// them right after).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot bind a loopback port")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// `GET path` over HTTP/1.0: the status code and body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in the response from {addr}{path}"))?;
    Ok((status, body.to_string()))
}

/// Polls `ready` every 50 ms until it returns true, failing after `timeout`
/// or as soon as one of `procs` has exited (naming it, with its status and
/// the end of its log).
pub fn wait_for(
    what: &str,
    timeout: Duration,
    procs: &[&Child],
    mut ready: impl FnMut() -> Option<String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        for p in procs {
            p.check().with_context(|| format!("while waiting for {what}"))?;
        }
        let Some(why) = ready() else { return Ok(()) };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {why}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time (user + system) a process has used so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("unexpected format of {path}"))
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command
/// name (field 2) may contain spaces and parentheses, so count from its end.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A process's memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` from `/proc/PID/status`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_memory(&status).with_context(|| format!("no VmRSS/VmHWM in {path}"))
}

fn parse_memory(status: &str) -> Option<Memory> {
    let field =
        |name: &str| status.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok());
    Some(Memory { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")? })
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/fd");
    let dir = std::fs::read_dir(&path).with_context(|| format!("cannot list {path}"))?;
    Ok(dir.count() as u64)
}

/// Runs a command to completion, capturing its output; kills it if it runs
/// longer than `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the command")?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_stat() {
        let stat = "4242 (mesh (proxy) x) S 1 4242 4242 0 -1 4194560 1095 0 0 0 731 269 0 0 20 0 1 0 123 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(1000));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn memory_from_status() {
        let status = "Name:\tmesh-proxy\nVmHWM:\t   10240 kB\nVmRSS:\t    8192 kB\nThreads:\t2\n";
        assert_eq!(parse_memory(status), Some(Memory { rss_kib: 8192, hwm_kib: 10240 }));
        assert_eq!(parse_memory("Name:\tx\n"), None);
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu_ticks(std::process::id()).is_ok());
        assert!(memory(std::process::id()).is_ok_and(|m| m.rss_kib > 0));
        // Catches a count of the wrong directory: a file opened here is one
        // more. Tests running beside this one open and close sockets in the
        // same process, so one of a few tries must see exactly one more.
        let exactly_one_more = (0..20).any(|_| {
            let before = open_fds(std::process::id()).expect("fds");
            let f = std::fs::File::open("/proc/self/status").expect("open");
            let after = open_fds(std::process::id()).expect("fds");
            drop(f);
            after == before + 1
        });
        assert!(exactly_one_more, "opening a file never counted as one more descriptor");
    }
}
