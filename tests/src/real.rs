//! The secure mesh as separate real processes: the `mesh-control` binary
//! with a fresh CA, and `mesh-proxy` binaries with identity, each on fresh
//! loopback ports. For tests that must see what a process shows from the
//! outside (its log, its metrics, what its ports accept), not library state.

use crate::{bins, mesh};
use mesh_identity::dir::{ANCHORS, IdentityDir};
use mesh_identity::tls::Credentials;
use mesh_process::{Child, Spec};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The trust domain of every CA made here.
pub const TRUST_DOMAIN: &str = "mesh.test";

/// A free loopback port (taken again by a parallel test at worst: callers
/// retry on other ports when the process then fails to bind).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Starts `spec(a, b)` on two fresh addresses until its `/ready` (on the
/// admin address `spec` was given) answers `ready`; a process that exits at
/// once (a port taken between probe and bind) is started again on others.
async fn start_ready(spec: impl Fn(SocketAddr, SocketAddr) -> (Spec, SocketAddr)) -> (Child, SocketAddr, SocketAddr) {
    let mut last = String::new();
    for _ in 0..5 {
        let (a, b) = (free_addr(), free_addr());
        let (spec, admin) = spec(a, b);
        let child = Child::spawn(spec).unwrap();
        if ready_or_exited(&child, admin).await {
            return (child, a, b);
        }
        last = child.log_tail(30);
    }
    panic!("a process never became ready in five attempts; its last log:\n{last}");
}

/// Waits up to 15 s for `child`'s `/ready` on `admin` to answer `ready`;
/// false when it exits (or stays unready) first.
async fn ready_or_exited(child: &Child, admin: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && child.status().is_none() {
        if tokio::net::TcpStream::connect(admin).await.is_ok()
            && mesh::admin_get(admin, "/ready").await.starts_with("ready")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The real control plane with a CA.
pub struct Control {
    /// The process.
    pub child: Child,
    /// Its gRPC (TLS) address.
    pub grpc: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
    /// Its CA.
    pub identity: IdentityDir,
    dir: tempfile::TempDir,
}

impl Control {
    /// A fresh CA and an empty registry, served by `mesh-control`.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// As [`Control::start`], with `extra` flags (short timeouts, say).
    pub async fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let identity = IdentityDir::new(dir.path().join("identity"));
        identity.init(TRUST_DOMAIN, None).unwrap();
        std::fs::write(dir.path().join("registry.yaml"), mesh::registry_yaml(&[])).unwrap();
        let (reg, id_dir, log) =
            (dir.path().join("registry.yaml"), identity.path().to_path_buf(), dir.path().join("control.log"));
        let (child, grpc, admin) = start_ready(|grpc, admin| {
            let spec = Spec::new("mesh-control", bins::path("mesh-control"), &log)
                .args(["--registry-file", reg.to_str().unwrap(), "--registry-poll", "50ms"])
                .args(["--identity-dir", id_dir.to_str().unwrap()])
                .args(["--grpc-addr", &grpc.to_string(), "--admin-addr", &admin.to_string()])
                .args(extra)
                .env("MESH_LOG", "info");
            (spec, admin)
        })
        .await;
        Self { child, grpc, admin, identity, dir }
    }

    /// SIGKILLs the control plane (a crash: nothing is flushed or closed
    /// gracefully) and waits until it is reaped.
    pub fn kill(&self) {
        self.child.kill();
    }

    /// Starts the (killed) control plane again as it was started: the same
    /// identity directory, registry file and addresses (proxies dial a fixed
    /// address), its log appended to; waits until it is ready. Retried for a
    /// while should the old port still be held (by a lingering socket or,
    /// rarely, a parallel test's probe).
    pub async fn restart(&mut self) {
        assert!(!self.child.is_running(), "restart: the control plane is still running");
        let spec = self.child.spec().clone().append(true);
        for _ in 0..10 {
            let child = Child::spawn(spec.clone()).unwrap();
            if ready_or_exited(&child, self.admin).await {
                self.child = child;
                return;
            }
            child.kill();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the control plane did not restart on {} / {}:\n{}", self.grpc, self.admin, self.log());
    }

    /// Replaces the registry (picked up within ~100 ms).
    pub fn write_registry(&self, services: &[mesh::Svc]) {
        let tmp = self.dir.path().join(".registry.tmp");
        std::fs::write(&tmp, mesh::registry_yaml(services)).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("registry.yaml")).unwrap();
    }

    /// The control plane's URL for proxies.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.child.log_path()).unwrap_or_default()
    }

    /// A join token for `default`/`service_account`.
    pub fn token(&self, service_account: &str) -> String {
        self.identity.mint_token("default", service_account, Duration::from_secs(3600)).unwrap()
    }

    /// The trust anchors file.
    pub fn anchors_path(&self) -> PathBuf {
        self.identity.path().join(ANCHORS)
    }

    /// Credentials holding only the trust bundle (no certificate of their own).
    pub fn bundle_only(&self) -> Arc<Credentials> {
        let pem = std::fs::read_to_string(self.anchors_path()).unwrap();
        Credentials::new(mesh_identity::pem::certs(&pem).unwrap()).unwrap()
    }

    /// The identity the control plane serves its gRPC port as.
    pub fn identity_id(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/mesh-system/sa/mesh-control")
    }

    /// The flags giving a proxy an identity as `default`/`service_account`
    /// from this control plane (its token written to a file).
    pub fn proxy_identity_args(&self, service_account: &str) -> Vec<String> {
        let token = self.dir.path().join(format!("{service_account}-{}.token", fastrand::u32(..)));
        std::fs::write(&token, self.token(service_account)).unwrap();
        [
            "--control-plane",
            &self.url(),
            "--identity-token-file",
            token.to_str().unwrap(),
            "--trust-anchors",
            self.anchors_path().to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// A real proxy.
pub struct Proxy {
    /// The process.
    pub child: Child,
    /// The listener `args` got first (inbound or an upstream).
    pub listen: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `mesh-proxy` with `args(listen, admin)` (two fresh addresses)
    /// and waits until it is ready (with identity: holds a certificate).
    pub async fn start(name: &str, args: impl Fn(SocketAddr, SocketAddr) -> Vec<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let (child, listen, admin) = start_ready(|listen, admin| {
            let spec = Spec::new(name, bins::path("mesh-proxy"), &log)
                .args(["--workload", name])
                .args(args(listen, admin))
                .args(["--admin-addr", &admin.to_string()])
                .env("MESH_LOG", "info");
            (spec, admin)
        })
        .await;
        Self { child, listen, admin, _dir: dir }
    }

    /// Its `/metrics`.
    pub async fn metrics(&self) -> String {
        mesh::admin_get(self.admin, "/metrics").await
    }
}

/// Offers a TLS handshake to `addr` from a client that speaks TLS 1.2 only
/// (offering `alpn` when given) and returns what the client printed. The
/// one place the TLS 1.2 client is chosen: replace it here if `openssl`
/// must go (a rustls client needs rustls' `tls12` feature).
pub fn tls12_only_handshake(addr: SocketAddr, alpn: Option<&str>) -> String {
    tls_handshake(addr, "-tls1_2", alpn)
}

/// `openssl s_client VERSION -connect addr` (`VERSION`: `-tls1_2`,
/// `-tls1_3`), offering `alpn` when given: its exit code, stdout and stderr.
pub fn tls_handshake(addr: SocketAddr, version: &str, alpn: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", version, "-connect", &addr.to_string()]);
    if let Some(a) = alpn {
        cmd.args(["-alpn", a]);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl s_client (install openssl): {e}"));
    format!(
        "exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
