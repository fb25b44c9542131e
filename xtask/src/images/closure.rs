//! What a binary loads: its dynamic loader and shared libraries, found with
//! the system's `ldd` (the loader's own resolution, so the search path,
//! `ld.so.cache` and transitive dependencies are exactly what a run would use).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The absolute paths a dynamically linked binary loads at start (loader
/// included), in `ldd`'s order; empty for a static binary.
pub fn shared_objects(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .context("cannot run `ldd` (it comes with the C library: apt-get install libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if is_static(&text) || is_static(&err) {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!("`ldd {}` failed ({}): {}", binary.display(), out.status, err.trim());
    }
    parse_ldd(&text).with_context(|| format!("reading `ldd {}`", binary.display()))
}

fn is_static(text: &str) -> bool {
    text.contains("statically linked") || text.contains("not a dynamic executable")
}

/// Parses `ldd` output: `name => /path (0x…)` lines give libraries, a bare
/// `/path (0x…)` line the loader; the vDSO (no file) is skipped. A library
/// the loader cannot find is an error naming it.
pub fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("the loader cannot find {}: install it on this machine first", name.trim());
                }
                rest
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or_default();
        if !path.starts_with('/') {
            // linux-vdso.so.1 (0x…): provided by the kernel, no file.
            continue;
        }
        let path = PathBuf::from(path);
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLIBC: &str = "\tlinux-vdso.so.1 (0x00007ffd4b3e2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1964baa000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f1963d20000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1963b3e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f1964bdd000)
";

    /// Catches the loader (no `=>`) or a library being dropped, or the vDSO
    /// taken for a file.
    #[test]
    fn libraries_and_loader_are_read_vdso_skipped() {
        let paths = parse_ldd(GLIBC).expect("parses");
        let want = [
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ];
        assert_eq!(paths, want.iter().map(PathBuf::from).collect::<Vec<_>>());
    }

    /// Catches an image built without a library the binary needs.
    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let err = parse_ldd("\tlibssl.so.3 => not found\n").expect_err("refused");
        assert!(err.to_string().contains("libssl.so.3"), "{err}");
    }

    /// Catches the closure of a real binary missing the loader or libc (this
    /// test runs against the machine's own `ldd` and test binary).
    #[test]
    fn the_running_test_binary_has_a_loader_and_libc() {
        let exe = std::env::current_exe().expect("current exe");
        let paths = shared_objects(&exe).expect("ldd");
        let names: Vec<String> =
            paths.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("libc.so")), "{names:?}");
    }
}
