//! Running cargo and finding what it built.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// A `cargo ARGS...` command run from the workspace root, with the same cargo
/// that runs xtask.
pub fn cargo(args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// A command line for humans: program and arguments, space-separated.
pub fn display(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let program = program.file_name().unwrap_or(program.as_os_str());
    std::iter::once(program)
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs one step in the foreground, announcing it; fails unless it exits 0.
pub fn run_step(cmd: &mut Command) -> anyhow::Result<()> {
    let line = display(cmd);
    eprintln!("==> {line}");
    let status = cmd.status().with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!("step `{line}` failed ({status})");
    }
    Ok(())
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR` and config files).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let out =
        cargo(&["metadata", "--format-version", "1", "--no-deps"]).output().context("cannot run `cargo metadata`")?;
    if !out.status.success() {
        bail!("`cargo metadata` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("`cargo metadata` printed invalid JSON")?;
    meta.get("target_directory")
        .and_then(|d| d.as_str())
        .map(PathBuf::from)
        .context("`cargo metadata` did not report a target_directory")
}

/// The path of release binary `name`, which must exist (build it first).
pub fn release_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = target_dir()?.join("release").join(name);
    if !path.is_file() {
        bail!("{} does not exist after the release build: is there a `{name}` binary target yet?", path.display());
    }
    Ok(path)
}
