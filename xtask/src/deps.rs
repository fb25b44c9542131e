//! System tools xtask's commands need, installed from Debian's packages when
//! missing and running as root (CI, a fresh machine); otherwise a clear
//! message with the command to run.

use anyhow::{Context, bail};
use std::process::Command;

/// (command, Debian package) pairs the test suite uses.
/// (`openssl s_client` is the process suite's TLS 1.2-only client.)
pub const TEST_TOOLS: &[(&str, &str)] =
    &[("curl", "curl"), ("openssl", "openssl"), ("iptables", "iptables"), ("ip", "iproute2"), ("tcpdump", "tcpdump")];

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Makes sure every tool in `tools` is on PATH.
pub fn ensure(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let line = format!("apt-get install -y {}", missing.join(" "));
    if !is_root() || !have("apt-get") {
        bail!("missing tools; install them with: sudo {line}");
    }
    eprintln!("==> apt-get update && {line}");
    for args in
        [vec!["update", "-qq"], [vec!["install", "-y", "-qq", "--no-install-recommends"], missing.clone()].concat()]
    {
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status})", args.join(" "));
        }
    }
    Ok(())
}
