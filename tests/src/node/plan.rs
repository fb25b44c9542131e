//! What the node runs for a Pod, decided without I/O: the containers in
//! the order a kubelet starts them (init containers, native sidecars among
//! them, then app containers), each with the program its image names, its
//! arguments and environment resolved as the kubelet does (`fieldRef`,
//! `$(VAR)`), the user and capabilities its security context gives, its
//! volume mounts and its probes.

use mesh_kube::api::k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Probe as KubeProbe};
use mesh_kube::api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The capabilities a container runtime (containerd, CRI-O) grants by
/// default, before a security context's `drop`/`add`.
pub const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Why a Pod cannot be run here (reported as the container's waiting
/// reason `CreateContainerConfigError`, as a kubelet does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The image is not one this node knows how to run.
    #[error("container {container}: image {image:?} is not known to this node (known: {known})")]
    UnknownImage { container: String, image: String, known: String },
    /// `command[0]` is not the image's binary.
    #[error("container {container}: command {program:?} is not in image {image:?} (it holds {binary:?})")]
    NotInImage { container: String, program: String, image: String, binary: String },
    /// An environment source the node does not implement.
    #[error("container {container}: env {var}: {what} is not supported by this node")]
    UnsupportedEnv { container: String, var: String, what: String },
    /// `runAsNonRoot` with a root user.
    #[error("container {container}: runAsNonRoot is set but the container would run as root (UID 0)")]
    RootNotAllowed { container: String },
    /// A probe's named port that no container port has.
    #[error("container {container}: probe port {port:?} is not a named port of the container")]
    UnknownPort { container: String, port: String },
    /// A probe kind the node does not implement (exec, gRPC).
    #[error("container {container}: only httpGet and tcpSocket probes are supported")]
    UnsupportedProbe { container: String },
}

/// One image this node can run: the host binary that is its entrypoint,
/// and the image's default user.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    /// The binary (the image's entrypoint).
    pub binary: PathBuf,
    /// `config.User` of the image: (uid, gid).
    pub user: (u32, u32),
}

/// Images by repository name without registry or tag (`mesh-proxy` for
/// `ghcr.io/x/mesh-proxy:0.1.0`).
pub type Images = BTreeMap<String, ImageEntry>;

/// The repository's last path component, without tag or digest.
pub fn image_key(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// Where a container sits in the start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An init container: runs to completion before the next starts.
    Init,
    /// A native sidecar (init container with `restartPolicy: Always`):
    /// started, and the next container waits until it has started.
    Sidecar,
    /// An app container.
    App,
}

/// What a probe does, from the node into the pod's IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// `httpGet`: a 2xx or 3xx answer passes.
    Http { port: u16, path: String },
    /// `tcpSocket`: a completed connect passes.
    Tcp { port: u16 },
}

/// A probe with its timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// What it does.
    pub action: ProbeAction,
    /// Before the first run.
    pub initial_delay: Duration,
    /// Between runs.
    pub period: Duration,
    /// Per attempt.
    pub timeout: Duration,
    /// Consecutive successes to pass.
    pub success_threshold: u32,
    /// Consecutive failures to fail.
    pub failure_threshold: u32,
}

/// A volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// The pod's volume name.
    pub volume: String,
    /// Where the container sees it.
    pub path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// One container, ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Its name.
    pub name: String,
    /// Its image (as the pod names it).
    pub image: String,
    /// Init, sidecar or app.
    pub role: Role,
    /// The host binary.
    pub program: PathBuf,
    /// Its arguments (after `command[0]`).
    pub args: Vec<String>,
    /// Its environment, in order.
    pub env: Vec<(String, String)>,
    /// (uid, gid) it runs as.
    pub user: (u32, u32),
    /// Capabilities it holds (names without `CAP_`, upper case).
    pub caps: Vec<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
    /// `readOnlyRootFilesystem: true`: only its volumes not mounted
    /// `readOnly` are writable.
    pub read_only_root: bool,
    /// Its volume mounts.
    pub mounts: Vec<MountPlan>,
    /// Probes.
    pub startup: Option<ProbeSpec>,
    /// Readiness probe.
    pub readiness: Option<ProbeSpec>,
    /// Liveness probe.
    pub liveness: Option<ProbeSpec>,
}

/// Facts about the running pod that `fieldRef`s read.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// `status.podIP`.
    pub pod_ip: String,
    /// `status.hostIP`.
    pub host_ip: String,
}

/// The pod's containers in start order, or the first reason it cannot run.
pub fn plan(pod: &Pod, facts: &PodFacts, images: &Images) -> Result<Vec<ContainerPlan>, PlanError> {
    let Some(spec) = pod.spec.as_ref() else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let role = if c.restart_policy.as_deref() == Some("Always") { Role::Sidecar } else { Role::Init };
        out.push(container(pod, c, role, facts, images)?);
    }
    for c in &spec.containers {
        out.push(container(pod, c, Role::App, facts, images)?);
    }
    Ok(out)
}

fn container(
    pod: &Pod,
    c: &Container,
    role: Role,
    facts: &PodFacts,
    images: &Images,
) -> Result<ContainerPlan, PlanError> {
    let image = c.image.clone().unwrap_or_default();
    let entry = images.get(image_key(&image)).ok_or_else(|| PlanError::UnknownImage {
        container: c.name.clone(),
        image: image.clone(),
        known: images.keys().cloned().collect::<Vec<_>>().join(", "),
    })?;
    let env = environment(pod, c, facts)?;
    let vars: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut args: Vec<String> = Vec::new();
    if let Some(command) = &c.command {
        let (first, rest) = command.split_first().map_or(("", &[][..]), |(f, r)| (f.as_str(), r));
        let binary_name = entry.binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let program = expand(first, &vars);
        if image_key(&program) != binary_name && program.rsplit('/').next() != Some(binary_name.as_str()) {
            return Err(PlanError::NotInImage { container: c.name.clone(), program, image, binary: binary_name });
        }
        args.extend(rest.iter().map(|a| expand(a, &vars)));
    }
    args.extend(c.args.iter().flatten().map(|a| expand(a, &vars)));

    let (user, caps, no_new_privs) = security(pod, c, entry.user)?;
    let mounts = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| MountPlan { volume: m.name.clone(), path: m.mount_path.clone(), read_only: m.read_only == Some(true) })
        .collect();
    let probe = |p: &Option<KubeProbe>| p.as_ref().map(|p| probe_spec(c, p)).transpose();
    Ok(ContainerPlan {
        name: c.name.clone(),
        image,
        role,
        program: entry.binary.clone(),
        args,
        env,
        user,
        caps,
        no_new_privs,
        read_only_root: c.security_context.as_ref().and_then(|s| s.read_only_root_filesystem) == Some(true),
        mounts,
        startup: probe(&c.startup_probe)?,
        readiness: probe(&c.readiness_probe)?,
        liveness: probe(&c.liveness_probe)?,
    })
}

/// The container's environment: each value expanded against the ones
/// before it, `fieldRef`s read from the pod.
fn environment(pod: &Pod, c: &Container, facts: &PodFacts) -> Result<Vec<(String, String)>, PlanError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for EnvVar { name, value, value_from } in c.env.iter().flatten() {
        let v = match (value, value_from) {
            (_, Some(from)) => {
                let Some(field) = &from.field_ref else {
                    return Err(PlanError::UnsupportedEnv {
                        container: c.name.clone(),
                        var: name.clone(),
                        what: "valueFrom other than fieldRef".into(),
                    });
                };
                field_value(pod, facts, &field.field_path).ok_or_else(|| PlanError::UnsupportedEnv {
                    container: c.name.clone(),
                    var: name.clone(),
                    what: format!("fieldRef {}", field.field_path),
                })?
            }
            (Some(v), None) => {
                let vars: BTreeMap<&str, &str> = out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(v, &vars)
            }
            (None, None) => String::new(),
        };
        out.retain(|(k, _)| k != name);
        out.push((name.clone(), v));
    }
    Ok(out)
}

/// A downward-API field of the pod.
pub fn field_value(pod: &Pod, facts: &PodFacts, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    Some(match path {
        "metadata.name" => meta.name.clone()?,
        "metadata.namespace" => meta.namespace.clone()?,
        "metadata.uid" => meta.uid.clone()?,
        "spec.serviceAccountName" => spec?.service_account_name.clone().unwrap_or_else(|| "default".into()),
        "spec.nodeName" => spec?.node_name.clone()?,
        "status.podIP" => facts.pod_ip.clone(),
        "status.hostIP" => facts.host_ip.clone(),
        other => {
            let key = other.strip_prefix("metadata.labels['")?.strip_suffix("']")?;
            meta.labels.as_ref()?.get(key)?.clone()
        }
    })
}

/// `$(NAME)` replaced by a defined variable (left as written otherwise),
/// `$$` by `$`: the kubelet's expansion of env values, command and args.
pub fn expand(s: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(v) = vars.get(&inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// (uid, gid), capabilities and no-new-privs.
type Security = ((u32, u32), Vec<String>, bool);

/// (uid, gid), capabilities and no-new-privs from the container's and the
/// pod's security contexts over the image's user.
fn security(pod: &Pod, c: &Container, image_user: (u32, u32)) -> Result<Security, PlanError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let as_u32 = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let uid = as_u32(sc.and_then(|s| s.run_as_user))
        .or_else(|| as_u32(pod_sc.and_then(|s| s.run_as_user)))
        .unwrap_or(image_user.0);
    let gid = as_u32(sc.and_then(|s| s.run_as_group))
        .or_else(|| as_u32(pod_sc.and_then(|s| s.run_as_group)))
        .unwrap_or(image_user.1);
    let non_root = sc.and_then(|s| s.run_as_non_root).or_else(|| pod_sc.and_then(|s| s.run_as_non_root));
    if non_root == Some(true) && uid == 0 {
        return Err(PlanError::RootNotAllowed { container: c.name.clone() });
    }
    let caps = if sc.and_then(|s| s.privileged) == Some(true) {
        vec!["ALL".to_string()]
    } else {
        let capabilities = sc.and_then(|s| s.capabilities.as_ref());
        let norm = |v: &String| v.trim_start_matches("CAP_").to_ascii_uppercase();
        let drop: Vec<String> = capabilities.and_then(|c| c.drop.as_ref()).into_iter().flatten().map(norm).collect();
        let add: Vec<String> = capabilities.and_then(|c| c.add.as_ref()).into_iter().flatten().map(norm).collect();
        let mut caps: Vec<String> = if drop.iter().any(|d| d == "ALL") {
            Vec::new()
        } else {
            DEFAULT_CAPS.iter().map(|c| c.to_string()).filter(|c| !drop.contains(c)).collect()
        };
        for a in add {
            if !caps.contains(&a) {
                caps.push(a);
            }
        }
        caps
    };
    let no_new_privs = sc.and_then(|s| s.allow_privilege_escalation) == Some(false);
    Ok(((uid, gid), caps, no_new_privs))
}

fn probe_spec(c: &Container, p: &KubeProbe) -> Result<ProbeSpec, PlanError> {
    let port = |port: &IntOrString| -> Result<u16, PlanError> {
        match port {
            IntOrString::Int(n) => {
                u16::try_from(*n).map_err(|_| PlanError::UnknownPort { container: c.name.clone(), port: n.to_string() })
            }
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| PlanError::UnknownPort { container: c.name.clone(), port: name.clone() }),
        }
    };
    let action = if let Some(h) = &p.http_get {
        ProbeAction::Http { port: port(&h.port)?, path: h.path.clone().unwrap_or_else(|| "/".into()) }
    } else if let Some(t) = &p.tcp_socket {
        ProbeAction::Tcp { port: port(&t.port)? }
    } else {
        return Err(PlanError::UnsupportedProbe { container: c.name.clone() });
    };
    let secs =
        |v: Option<i32>, default: u64| Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default));
    let count =
        |v: Option<i32>, default: u32| v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default);
    Ok(ProbeSpec {
        action,
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10),
        timeout: secs(p.timeout_seconds, 1),
        success_threshold: count(p.success_threshold, 1),
        failure_threshold: count(p.failure_threshold, 3),
    })
}

/// `setpriv` arguments that give a process the plan's user and
/// capabilities (root: the inheritable and bounding sets are the
/// capabilities, so they are its permitted and effective ones after exec;
/// other users: the bounding set, and `setpriv` drops the rest with the UID).
pub fn setpriv_args(c: &ContainerPlan) -> Vec<String> {
    let mut out: Vec<String> = vec!["--pdeathsig".into(), "keep".into()];
    if c.caps.iter().any(|c| c == "ALL") {
        // privileged: every capability stays.
    } else {
        let mut set = String::from("-all");
        for cap in &c.caps {
            set.push_str(",+");
            set.push_str(&cap.to_ascii_lowercase());
        }
        out.extend(["--inh-caps".into(), set.clone(), "--bounding-set".into(), set]);
    }
    if c.user != (0, 0) {
        out.extend([
            "--reuid".into(),
            c.user.0.to_string(),
            "--regid".into(),
            c.user.1.to_string(),
            "--clear-groups".into(),
        ]);
    }
    if c.no_new_privs {
        out.push("--no-new-privs".into());
    }
    out
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
