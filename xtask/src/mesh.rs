//! Starting a mesh from the release binaries, as users run it: what `cargo
//! xtask bench` and `cargo xtask soak` share. An identity directory and join
//! tokens from `meshctl identity` (xtask links no TLS), the control plane and
//! proxies as supervised child processes with their command lines, and
//! readiness checks over their admin ports.

use crate::procs::{command, http_get, output_with_timeout, spawn, wait_for};
use anyhow::{Context, bail};
use mesh_process::Child;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a process may take to become ready.
pub const STARTUP: Duration = Duration::from_secs(20);
/// Timeout of one admin request.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The trust bundle's file in an identity directory (`mesh_identity::dir::ANCHORS`).
const ANCHORS: &str = "trust-anchors.pem";
/// How long one `meshctl identity` command may take.
const MESHCTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Lifetime of join tokens, as `meshctl identity token --ttl`: each gets its
/// proxy the first certificate only (once; renewals use the certificate), so
/// it need only outlast start-up, which this covers with room.
const TOKEN_TTL: &str = "24h";

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The release binaries a mesh is made of.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `mesh-proxy`.
    pub proxy: PathBuf,
    /// `mesh-control`.
    pub control: PathBuf,
    /// `meshctl`: the identity directory and join tokens.
    pub meshctl: PathBuf,
    /// `mesh-test-app`: apps and the OTLP sink.
    pub test_app: PathBuf,
}

impl Bins {
    /// The release binaries, which must have been built.
    pub fn release() -> anyhow::Result<Self> {
        Ok(Self {
            proxy: crate::cargo::release_bin("mesh-proxy")?,
            control: crate::cargo::release_bin("mesh-control")?,
            meshctl: crate::cargo::release_bin("meshctl")?,
            test_app: crate::cargo::release_bin("mesh-test-app")?,
        })
    }
}

/// An identity directory as users set it up with `meshctl identity init`:
/// the control plane's CA and the proxies' trust bundle.
#[derive(Debug)]
pub struct IdentityDir {
    /// The identity directory (`mesh-control --identity-dir`).
    pub dir: PathBuf,
    /// Its trust bundle (`mesh-proxy --trust-anchors`).
    pub anchors: PathBuf,
    meshctl: PathBuf,
}

impl IdentityDir {
    /// Creates `<dir>/identity` for `trust_domain` with `meshctl identity init`.
    pub fn init(meshctl: &Path, dir: &Path, trust_domain: &str) -> anyhow::Result<Self> {
        let path = dir.join("identity");
        let d = path.display().to_string();
        run_meshctl(meshctl, &["identity", "init", "--dir", &d, "--trust-domain", trust_domain])?;
        let anchors = path.join(ANCHORS);
        if !anchors.is_file() {
            bail!("`meshctl identity init` wrote no {}", anchors.display());
        }
        Ok(Self { dir: path, anchors, meshctl: meshctl.to_path_buf() })
    }

    /// Mints a join token for service account `account` (namespace
    /// `default`) into `file` with `meshctl identity token`. A token is
    /// accepted once: mint one per proxy (per control plane that has seen it).
    pub fn token(&self, account: &str, file: &Path) -> anyhow::Result<PathBuf> {
        let (d, f) = (self.dir.display().to_string(), file.display().to_string());
        run_meshctl(
            &self.meshctl,
            &[
                "identity",
                "token",
                "--dir",
                &d,
                "--namespace",
                "default",
                "--service-account",
                account,
                "--ttl",
                TOKEN_TTL,
                "--output",
                &f,
            ],
        )?;
        Ok(file.to_path_buf())
    }
}

/// Runs `meshctl ARGS...` to completion; fails with its output unless it exits 0.
fn run_meshctl(meshctl: &Path, args: &[&str]) -> anyhow::Result<()> {
    let line = format!("meshctl {}", args.join(" "));
    let out = output_with_timeout(command(meshctl).args(args), MESHCTL_TIMEOUT)
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Command-line arguments from anything printable.
pub fn args(list: &[&dyn std::fmt::Display]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// The control plane's command line: universal mode on `registry`, serving
/// gRPC on `grpc` (TLS with `identity_dir`) and admin on `admin`.
pub fn control_args(registry: &Path, grpc: SocketAddr, admin: SocketAddr, identity_dir: Option<&Path>) -> Vec<String> {
    let mut a = args(&[&"--registry-file", &registry.display(), &"--grpc-addr", &grpc, &"--admin-addr", &admin]);
    if let Some(dir) = identity_dir {
        a.extend(args(&[&"--identity-dir", &dir.display()]));
    }
    a
}

/// Starts `mesh-control ARGS...` as `name` and waits for its `/ready` on `admin`.
pub fn start_control(bins: &Bins, name: &str, args: &[String], admin: SocketAddr, dir: &Path) -> anyhow::Result<Child> {
    let control = spawn(name, &bins.control, args, &[], dir)?;
    wait_for(&format!("{name} /ready"), STARTUP, &[&control], || ready(admin))?;
    Ok(control)
}

/// A proxy's identity: its join token and the trust anchors.
#[derive(Debug, Clone, Copy)]
pub struct ProxyIdentity<'a> {
    /// `--identity-token-file`.
    pub token: &'a Path,
    /// `--trust-anchors`.
    pub anchors: &'a Path,
}

/// The command line every proxy shares: its workload, control plane (gRPC
/// at `grpc`, over TLS when it has an identity), admin address and threads.
pub fn proxy_args(
    workload: &str,
    grpc: SocketAddr,
    admin: SocketAddr,
    threads: usize,
    identity: Option<ProxyIdentity<'_>>,
) -> Vec<String> {
    let cp = format!("http://{grpc}");
    let mut a =
        args(&[&"--workload", &workload, &"--control-plane", &cp, &"--admin-addr", &admin, &"--threads", &threads]);
    if let Some(id) = identity {
        a.extend(args(&[&"--identity-token-file", &id.token.display(), &"--trust-anchors", &id.anchors.display()]));
    }
    a
}

/// `None` once `GET /ready` answers 200; otherwise why not.
pub fn ready(admin: SocketAddr) -> Option<String> {
    match http_get(admin, "/ready", ADMIN_TIMEOUT) {
        Ok((200, _)) => None,
        Ok((status, body)) => Some(format!("/ready answered {status} {}", body.trim())),
        Err(e) => Some(format!("/ready: {e}")),
    }
}

/// The status and endpoint count of the proxy's first outbound target, from
/// its `/config`.
pub fn first_target(admin: SocketAddr) -> anyhow::Result<(String, usize)> {
    let body = match http_get(admin, "/config", ADMIN_TIMEOUT) {
        Ok((200, body)) => body,
        Ok((status, _)) => bail!("/config answered {status}"),
        Err(e) => return Err(e.context("/config")),
    };
    let config: serde_json::Value = serde_json::from_str(&body).context("/config is not JSON")?;
    let target = config.pointer("/targets/0");
    let status = target.and_then(|t| t.get("status")).and_then(|s| s.as_str()).unwrap_or("absent");
    let endpoints = target.and_then(|t| t.get("endpoints")).and_then(|e| e.as_array()).map_or(0, Vec::len);
    Ok((status.to_string(), endpoints))
}

/// `None` once the proxy's `/config` shows its first target resolved to at
/// least one endpoint; otherwise what it shows.
pub fn resolved(admin: SocketAddr) -> Option<String> {
    match first_target(admin) {
        Ok((status, endpoints)) if status == "resolved" && endpoints > 0 => None,
        Ok((status, endpoints)) => Some(format!("targets[0].status is {status:?} with {endpoints} endpoint(s)")),
        Err(e) => Some(format!("{e:#}")),
    }
}

/// A process's admin `/metrics`.
pub fn metrics(admin: SocketAddr) -> anyhow::Result<String> {
    match http_get(admin, "/metrics", ADMIN_TIMEOUT) {
        Ok((200, body)) => Ok(body),
        Ok((status, _)) => bail!("GET {admin}/metrics answered {status}"),
        Err(e) => Err(e.context(format!("GET {admin}/metrics"))),
    }
}
