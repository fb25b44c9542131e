//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `cargo xtask test [ARGS...]`: build every binary, then run the whole test suite.
//! - `cargo xtask demo [ARGS...]`: build release binaries and run `meshctl demo`.
//! - `cargo xtask bench [OPTIONS]`: measure the mesh's cost per hop on loopback and in netns pods (mTLS, handshakes, tracing).
//! - `cargo xtask e2e-kind`: the mesh on a kind cluster (Docker and kind required; for users' CI).
//! - `cargo xtask fuzz [--time 10m] [TARGET...]`: run the fuzz targets (`fuzz/`) under libFuzzer.
//! - `cargo xtask soak [OPTIONS]`: a fixed rate through the mesh for 30 minutes under endpoint churn,
//!   certificate rotation and control-plane restarts; asserts no failure and flat resources.
//! - `cargo xtask images [--out DIR]`: OCI image archives of the release binaries, without Docker.

mod bench;
mod cargo;
mod deps;
mod fuzz;
mod kind;
mod mesh;
mod procs;
mod prom;
mod soak;
mod svg;

use clap::{Parser, Subcommand};

/// Project automation for the mesh workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build all binaries, then run `cargo test --workspace --no-fail-fast` (CI's entry point).
    ///
    /// Extra arguments go to `cargo test`, e.g. `cargo xtask test -- --nocapture`.
    Test {
        /// Passed through to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build release binaries and run `meshctl demo` with the given arguments
    /// (`--help` too; `cargo xtask help demo` shows this text).
    #[command(disable_help_flag = true)]
    Demo {
        /// Passed through to `meshctl demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark the mesh's added latency, CPU and memory per hop against nginx: HTTP through the
    /// mTLS (or plaintext) mesh, new connections and handshakes, and the cost of tracing.
    Bench(bench::BenchArgs),
    /// Install the mesh on a fresh kind cluster and prove it end to end (needs Docker, kind and
    /// kubectl; says so and fails without them): install, check, the demo app injected, mTLS
    /// only, an unmeshed client refused, uninstall leaving nothing.
    E2eKind(kind::KindArgs),
    /// Fuzz what the mesh parses from peers and users (protocol detection, ClientHellos, HTTP/1
    /// request heads, registry YAML, policies) with libFuzzer, each target for `--time`, from
    /// the seeds in fuzz/seeds/; fails naming the input of any crash.
    Fuzz(fuzz::FuzzArgs),
    /// Soak the mesh: a fixed request rate for a long run (default 30m) under endpoint churn,
    /// certificate rotation and control-plane restarts. Fails on any failed request, or when
    /// RSS or open descriptors of the proxies or the control plane grow; writes target/soak/.
    Soak(soak::SoakArgs),
    /// Build OCI image archives (mesh-proxy, mesh-control, meshctl) from the release binaries,
    /// without Docker; load them with `docker load -i` or `kind load image-archive`.
    Images(ImagesArgs),
}

/// `cargo xtask images` options.
#[derive(Debug, clap::Args)]
struct ImagesArgs {
    /// Where the archives go (default: `<target dir>/images`).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Repository prefix for the image names (`""`: bare `mesh-proxy:VERSION`). The default is
    /// what `meshctl install` and the injector use.
    #[arg(long, default_value = xtask::images::DEFAULT_REGISTRY)]
    registry: String,
    /// Use the release binaries already built (skip `cargo build --release`).
    #[arg(long)]
    no_build: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Test { args } => test(&args),
        Command::Demo { args } => demo(&args),
        Command::Bench(args) => bench::run(&args),
        Command::E2eKind(args) => kind::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Soak(args) => soak::run(&args),
        Command::Images(args) => images(&args),
    }
}

/// The whole test suite, as a list of steps run in order; the first failure
/// stops it. Suites that need more (root, env) are added here as further steps.
/// How long CI fuzzes each target.
const CI_FUZZ_SECONDS: u64 = 5;

fn test(args: &[String]) -> anyhow::Result<()> {
    deps::ensure(deps::TEST_TOOLS)?;
    kube_harness()?;
    let mut build = cargo::cargo(&["build", "--workspace", "--bins"]);
    // Every failing test binary is reported, not just the first.
    let mut test = cargo::cargo(&["test", "--workspace", "--no-fail-fast"]);
    test.args(args);
    for step in [&mut build, &mut test] {
        cargo::run_step(step)?;
    }
    // CI also fuzzes every target for a few seconds (the instrumented build
    // costs minutes the first time, so local runs leave it to `cargo xtask fuzz`).
    if std::env::var("CI").as_deref() == Ok("true") {
        fuzz::run(&fuzz::FuzzArgs::smoke(CI_FUZZ_SECONDS))?;
    }
    eprintln!("xtask test: all steps passed");
    Ok(())
}

/// Builds the real kube-apiserver and kube-controller-manager the Kubernetes
/// suites run (`tests/kube-harness`, Go; cached). Without Go the suites skip
/// themselves, which `CI=true` turns into a failure.
fn kube_harness() -> anyhow::Result<()> {
    let script = cargo::workspace_root().join("tests/kube-harness/build.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script);
    eprintln!("==> {}", cargo::display(&cmd));
    let status = cmd.status().map_err(|e| anyhow::anyhow!("cannot run {}: {e}", script.display()))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(3) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("xtask test: no Go toolchain: the Kubernetes suites will report themselves skipped");
            Ok(())
        }
        _ => anyhow::bail!("building the Kubernetes test harness failed ({status}); see the output above"),
    }
}

/// Builds release binaries and replaces this process with `meshctl demo ARGS...`.
fn demo(args: &[String]) -> anyhow::Result<()> {
    cargo::run_step(&mut cargo::cargo(&["build", "--release", "--bins"]))?;
    let meshctl = cargo::release_bin("meshctl")?;
    let mut cmd = std::process::Command::new(&meshctl);
    cmd.arg("demo").args(args);
    eprintln!("==> {}", cargo::display(&cmd));
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    Err(anyhow::anyhow!("cannot run {}: {err}", meshctl.display()))
}

/// Builds the release binaries, then one image archive per binary.
fn images(args: &ImagesArgs) -> anyhow::Result<()> {
    use xtask::images;
    // The proxy image carries iptables for `mesh-proxy init`.
    deps::ensure(&[("strip", "binutils"), ("ldd", "libc-bin"), ("xtables-nft-multi", "iptables")])?;
    if !args.no_build {
        let mut build = vec!["build", "--release"];
        for package in images::CARGO_PACKAGES {
            build.extend(["-p", package]);
        }
        cargo::run_step(&mut cargo::cargo(&build))?;
    }
    let target = cargo::target_dir()?;
    let opts = images::Options {
        bin_dir: target.join("release"),
        out_dir: args.out.clone().unwrap_or_else(|| target.join("images")),
        version: env!("CARGO_PKG_VERSION").to_string(),
        registry: Some(args.registry.clone()),
    };
    eprintln!("==> building images in {}", opts.out_dir.display());
    for built in images::build_all(&opts)? {
        let archive = std::fs::metadata(&built.path).map(|m| m.len()).unwrap_or(0);
        println!(
            "{:<36} {}  compressed {:>5.1} MB  archive {:>5.1} MB  {}",
            built.reference,
            built.manifest_digest,
            built.compressed_size as f64 / 1e6,
            archive as f64 / 1e6,
            built.path.display()
        );
    }
    Ok(())
}
