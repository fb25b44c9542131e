//! A real Kubernetes control plane for the suites: kube-apiserver (with an
//! embedded etcd) and kube-controller-manager from `k8s.io/kubernetes`, built
//! by `tests/kube-harness/build.sh` into `target/kube-harness/kube-harness`
//! (see `tests/kube-harness/README.md`). Everything listens on 127.0.0.1 only
//! and lives in a temporary directory removed on drop.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let api = mesh_tests::kube_harness::ApiServer::start()?;
//! let _kcm = api.start_controller_manager()?;
//! // api.kubeconfig, api.url, api.ca_cert(), api.admin_cert(), api.admin_key(), api.token()?
//! # Ok(()) }
//! ```
//!
//! Starting blocks the calling thread (about 5–20 s on a busy 2-core
//! machine); from async code call it inside `tokio::task::spawn_blocking`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long [`ApiServer::start`] waits for `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stop waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Lines of log quoted in errors.
const TAIL_LINES: usize = 40;

const BUILD_HINT: &str = "build it with `tests/kube-harness/build.sh` (needs Go >= 1.26 and the Go module proxy; \
     10-15 minutes the first time on 2 busy cores), or point MESH_KUBE_HARNESS at a built binary";

/// Where the `kube-harness` binary is, or why it is not available (with the
/// command that builds it).
///
/// `$MESH_KUBE_HARNESS` wins when set; otherwise `kube-harness/kube-harness`
/// in the target directory of the running test, in `$CARGO_TARGET_DIR`, or in
/// `<workspace>/target`.
pub fn availability() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MESH_KUBE_HARNESS") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("MESH_KUBE_HARNESS={} does not exist; {BUILD_HINT}", p.display()))
        };
    }
    let candidates = candidate_paths();
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(format!("kube-harness binary not found (looked in {}); {BUILD_HINT}", looked.join(", ")))
}

/// The suite's API server, or `None` when the harness is not built (printed
/// as SKIPPED with the reason). With `CI=true` a missing harness panics: CI
/// must not pass by skipping the Kubernetes suites.
pub fn start_or_skip() -> Option<ApiServer> {
    if let Err(reason) = availability() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: the Kubernetes suites must run: {reason}");
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    Some(ApiServer::start().expect("the API server starts"))
}

fn candidate_paths() -> Vec<PathBuf> {
    let rel = Path::new("kube-harness").join("kube-harness");
    let mut out = Vec::new();
    // target/<profile>/deps/<test-exe> → target/
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe.ancestors().nth(3)
    {
        out.push(target.join(&rel));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        out.push(PathBuf::from(t).join(&rel));
    }
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join(&rel));
    out.dedup();
    out
}

/// A running kube-apiserver (and its etcd) in its own process.
pub struct ApiServer {
    dir: tempfile::TempDir,
    child: Child,
    bin: PathBuf,
    /// Admin kubeconfig (client certificate in `system:masters`, context
    /// `harness`); also accepted by the controller-manager.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .field("pid", &self.child.id())
            .finish()
    }
}

impl ApiServer {
    /// Starts `kube-harness apiserver` in a fresh temporary directory and
    /// waits (up to 120 s) until it answers `/readyz`.
    pub fn start() -> anyhow::Result<ApiServer> {
        Self::start_with_flags(&[])
    }

    /// [`Self::start`] with extra kube-apiserver flags (an audit policy, say).
    pub fn start_with_flags(extra: &[String]) -> anyhow::Result<ApiServer> {
        let bin = availability().map_err(anyhow::Error::msg)?;
        let dir =
            tempfile::Builder::new().prefix("kube-harness-").tempdir().context("creating a temporary directory")?;
        let log = dir.path().join("apiserver.log");
        let mut command = Command::new(&bin);
        command.arg("apiserver").arg("--dir").arg(dir.path());
        if !extra.is_empty() {
            command.arg("--").args(extra);
        }
        let child =
            spawn_logged(&mut command, &log).with_context(|| format!("spawning {} apiserver", bin.display()))?;
        let mut server = ApiServer { kubeconfig: dir.path().join("kubeconfig"), url: String::new(), dir, child, bin };

        let ready = server.dir.path().join("ready");
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().context("waiting for kube-harness apiserver")? {
                bail!(
                    "kube-harness apiserver exited ({status}) before it was ready; last lines of its log:\n{}",
                    tail(&log, TAIL_LINES)
                );
            }
            if let Ok(url) = std::fs::read_to_string(&ready) {
                server.url = url.trim().to_string();
                return Ok(server);
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "kube-harness apiserver not ready after {READY_TIMEOUT:?}; last lines of its log:\n{}",
                    tail(&log, TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts kube-controller-manager against this apiserver (namespace
    /// deletion, service accounts and their tokens, deployments, replica
    /// sets, EndpointSlices, garbage collection...). Stopped when the guard
    /// drops. Returns once the process is running; its controllers start
    /// within a few seconds.
    pub fn start_controller_manager(&self) -> anyhow::Result<ControllerManager> {
        let log = unique(self.dir.path().join("controller-manager.log"));
        let mut child = spawn_logged(
            Command::new(&self.bin)
                .arg("controller-manager")
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .arg("--dir")
                .arg(self.dir.path()),
            &log,
        )
        .with_context(|| format!("spawning {} controller-manager", self.bin.display()))?;
        // Flag or file errors end it at once: report them here rather than as
        // a namespace that never finishes deleting.
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = child.try_wait().context("waiting for kube-harness controller-manager")? {
            bail!(
                "kube-harness controller-manager exited ({status}); last lines of {}:\n{}",
                log.display(),
                tail(&log, TAIL_LINES)
            );
        }
        Ok(ControllerManager { child, log })
    }

    /// The state directory: PKI, etcd data, logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// CA certificate (PEM) that signed the apiserver's serving certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Admin client certificate (PEM; CN=admin, O=system:masters).
    pub fn admin_cert(&self) -> PathBuf {
        self.dir.path().join("admin.crt")
    }

    /// Key of [`Self::admin_cert`] (PEM).
    pub fn admin_key(&self) -> PathBuf {
        self.dir.path().join("admin.key")
    }

    /// A bearer token for the same admin user (`--token-auth-file`).
    pub fn token(&self) -> anyhow::Result<String> {
        let p = self.dir.path().join("admin.token");
        Ok(std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_string())
    }

    /// The service-account signing key pair (`sa.key` RSA private key,
    /// `sa.pub` public key), issuer `https://kubernetes.default.svc.cluster.local`.
    pub fn service_account_public_key(&self) -> PathBuf {
        self.dir.path().join("sa.pub")
    }

    /// Process id of the apiserver (for memory readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of the apiserver's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("apiserver.log"), lines)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A running kube-controller-manager; stopped on drop.
pub struct ControllerManager {
    child: Child,
    log: PathBuf,
}

impl std::fmt::Debug for ControllerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerManager").field("pid", &self.child.id()).field("log", &self.log).finish()
    }
}

impl ControllerManager {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for ControllerManager {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn unique(p: PathBuf) -> PathBuf {
    if !p.exists() {
        return p;
    }
    let stem = p.with_extension("");
    (1..).map(|i| PathBuf::from(format!("{}-{i}.log", stem.display()))).find(|c| !c.exists()).unwrap_or(p)
}

/// Spawns with stdout and stderr appended to `log`, stdin closed.
fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    Ok(cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn()?)
}

/// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL; always reaps.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Registers a control plane's injector, listening on localhost:`port`
/// with a certificate `ca_bundle` verifies, as the API server's mutating
/// webhook for pods outside kube-system and mesh-system (failurePolicy Fail).
pub async fn register_injector(client: &mesh_kube::api::Client, port: u16, ca_bundle: Vec<u8>) {
    use mesh_kube::api::k8s_openapi::ByteString;
    use mesh_kube::api::k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use mesh_kube::api::{Api, PostParams};
    use serde_json::json;
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "mesh-injector"},
        "webhooks": [{
            "name": "inject.mesh.dev",
            "clientConfig": {"url": format!("https://localhost:{port}/inject"), "caBundle": ByteString(ca_bundle)},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "mesh-system"]}
            ]},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 10
        }]
    }))
    .expect("a webhook configuration");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("registers the webhook");
}
