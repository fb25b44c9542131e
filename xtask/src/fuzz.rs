//! `cargo xtask fuzz`: builds the fuzz targets (`fuzz/`) with libFuzzer on
//! stable Rust and runs each for a while from the committed seeds.
//!
//! Stable rustc has no `-Zsanitizer`, but LLVM's sanitizer-coverage pass is
//! reachable with `-Cpasses` and `-Cllvm-args`: that is all libFuzzer needs
//! (inline 8-bit counters, the PC table, and comparison tracing). The build
//! gets its own target dir (`target/fuzz`), since RUSTFLAGS would otherwise
//! invalidate the normal build, and an explicit `--target` so the flags
//! reach the code under test but not build scripts and proc macros.

use crate::cargo;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The targets, in the order they run (the `[[bin]]`s of `fuzz/Cargo.toml`).
const TARGETS: [&str; 6] = ["detect", "client_hello", "http1_head", "registry_yaml", "policy", "admission"];

/// The sanitizer-coverage instrumentation libFuzzer feeds on.
const COVERAGE_FLAGS: &str = "-Cpasses=sancov-module \
     -Cllvm-args=-sanitizer-coverage-level=4 \
     -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
     -Cllvm-args=-sanitizer-coverage-pc-table \
     -Cllvm-args=-sanitizer-coverage-trace-compares";

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// How long each target runs, in whole seconds or minutes (`30s`, `10m`).
    #[arg(long, default_value = "60s", value_parser = crate::bench::whole_seconds)]
    time: u64,
    /// Largest input the fuzzer generates, in bytes.
    #[arg(long, default_value_t = 4096)]
    max_len: usize,
    /// Targets to run (default: all).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    targets: Vec<String>,
}

impl FuzzArgs {
    /// Every target for `seconds` (CI's smoke run).
    pub fn smoke(seconds: u64) -> Self {
        Self { time: seconds, max_len: 4096, targets: Vec::new() }
    }
}

/// What one target's run reported.
#[derive(Debug)]
struct Outcome {
    target: String,
    executions: u64,
    seconds: u64,
    corpus: usize,
    /// The input that crashed the target, if one did.
    crash: Option<PathBuf>,
}

/// Builds, then runs every chosen target; fails naming each crash's input.
pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<&str> =
        if args.targets.is_empty() { TARGETS.to_vec() } else { args.targets.iter().map(String::as_str).collect() };
    let root = cargo::workspace_root();
    let target_dir = root.join("target/fuzz");
    let triple = host_triple()?;
    let mut build = cargo::cargo(&["build", "--profile", "fuzz", "-p", "mesh-fuzz", "--features", "libfuzzer"]);
    build.args(["--target", &triple, "--target-dir"]).arg(&target_dir);
    for t in &targets {
        build.args(["--bin", t]);
    }
    build.env("RUSTFLAGS", COVERAGE_FLAGS).env_remove("CARGO_ENCODED_RUSTFLAGS");
    cargo::run_step(&mut build)?;
    let bins = target_dir.join(&triple).join("fuzz");

    let mut outcomes = Vec::new();
    for t in targets {
        outcomes.push(fuzz_one(root, &bins.join(t), t, args)?);
    }
    eprintln!("\n{:<14} {:>14} {:>8} {:>10} {:>8}  crashes", "target", "executions", "seconds", "exec/s", "corpus");
    for o in &outcomes {
        let rate = o.executions / o.seconds.max(1);
        let crashes = o.crash.as_ref().map_or("0".to_string(), |p| format!("1: {}", p.display()));
        eprintln!("{:<14} {:>14} {:>8} {:>10} {:>8}  {crashes}", o.target, o.executions, o.seconds, rate, o.corpus);
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| o.crash.is_some()).collect();
    if crashed.is_empty() {
        return Ok(());
    }
    for o in &crashed {
        if let Some(input) = &o.crash {
            eprintln!(
                "xtask fuzz: {} crashed on {}: reproduce with `{} {}`, fix it, add a regression test in the owning \
                 crate and copy the input to fuzz/regressions/{}/",
                o.target,
                input.display(),
                bins.join(&o.target).display(),
                input.display(),
                o.target
            );
        }
    }
    bail!("{} of {} fuzz targets crashed", crashed.len(), outcomes.len())
}

/// Runs one target for `args.time` seconds: the working corpus under
/// `target/fuzz/corpus/<target>` grows across runs, the committed seeds are
/// read only, and a crashing input lands in `target/fuzz/artifacts/<target>/`.
fn fuzz_one(root: &Path, bin: &Path, target: &str, args: &FuzzArgs) -> anyhow::Result<Outcome> {
    let corpus = root.join("target/fuzz/corpus").join(target);
    let artifacts = root.join("target/fuzz/artifacts").join(target);
    let seeds = root.join("fuzz/seeds").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let before: Vec<PathBuf> = files(&artifacts);
    let mut cmd = Command::new(bin);
    cmd.arg(&corpus)
        .arg(&seeds)
        .arg(format!("-max_total_time={}", args.time))
        .arg(format!("-max_len={}", args.max_len))
        // A single input running this long is a hang: a finding too.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("==> {}", cargo::display(&cmd));
    let started = std::time::Instant::now();
    let out = cmd.output().with_context(|| format!("cannot run {}", bin.display()))?;
    let seconds = started.elapsed().as_secs();
    let log = String::from_utf8_lossy(&out.stderr);
    let log_path = root.join("target/fuzz").join(format!("{target}.log"));
    std::fs::write(&log_path, log.as_bytes()).with_context(|| format!("cannot write {}", log_path.display()))?;
    let stat = |name: &str| -> u64 {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let crash = files(&artifacts).into_iter().find(|f| !before.contains(f));
    if !out.status.success() && crash.is_none() {
        bail!("fuzz target {target} failed ({}) without a crash input; see {}", out.status, log_path.display());
    }
    Ok(Outcome {
        target: target.to_string(),
        executions: stat("number_of_executed_units"),
        seconds: seconds.max(1),
        corpus: files(&corpus).len(),
        crash,
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// rustc's host target triple (`rustc -vV`).
fn host_triple() -> anyhow::Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().context("cannot run `rustc -vV`")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("`rustc -vV` printed no host triple")
}
