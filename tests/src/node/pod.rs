//! One pod's life on the node: its namespace, its containers started in
//! order (init containers to completion, native sidecars until started,
//! then apps), probes, restarts, status reported back, and on deletion the
//! graceful stop (apps first, then sidecars in reverse), the namespace
//! removed and the Pod deleted for good.

use super::containers::{BindMount, spawn};
use super::plan::{ContainerPlan, PodFacts, Role, plan};
use super::probes::{Tracker, Verdict, attempt};
use super::status::{Addresses, Observed, RunState, pod_status};
use super::{Ctx, PodView};
use mesh_kube::api::k8s_openapi::api::core::v1::{Pod, PodStatus};
use mesh_kube::api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mesh_kube::api::k8s_openapi::jiff::Timestamp;
use mesh_kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A restarted container waits this long (a fixed back-off).
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// How often the worker looks at its containers.
const TICK: Duration = Duration::from_millis(100);

/// A container slot: its plan, its process and what the node observed.
struct Slot {
    plan: ContainerPlan,
    child: Option<mesh_process::Child>,
    state: RunState,
    restarts: u32,
    started: bool,
    ready: bool,
    startup: Option<Tracker>,
    readiness: Option<Tracker>,
    liveness: Option<Tracker>,
    restart_at: Option<Instant>,
}

impl Slot {
    fn new(plan: ContainerPlan, waiting: &str) -> Self {
        Self {
            plan,
            child: None,
            state: RunState::Waiting { reason: waiting.into(), message: None },
            restarts: 0,
            started: false,
            ready: false,
            startup: None,
            readiness: None,
            liveness: None,
            restart_at: None,
        }
    }

    fn observed(&self) -> Observed {
        Observed {
            name: self.plan.name.clone(),
            image: self.plan.image.clone(),
            role: self.plan.role,
            state: self.state.clone(),
            restarts: self.restarts,
            started: self.started,
            ready: self.ready,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, RunState::Running { .. })
    }
}

/// The pod's worker: runs until the pod is deleted (its `rx` shows a
/// deletion timestamp, or the sender is dropped because the Pod is gone).
pub(super) async fn run(ctx: Arc<Ctx>, mut rx: watch::Receiver<Pod>) {
    let pod = rx.borrow().clone();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let key: String = uid.chars().filter(char::is_ascii_alphanumeric).take(10).collect();
    let pod_ns = ctx.net.pod_ns(&key);
    let start_time = Time(Timestamp::now());
    let host = ctx.alloc_host();
    let mut addrs = Addresses { pod_ip: String::new(), host_ip: ctx.net.node_ip().to_string() };
    let restart_policy = pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into());

    let mut slots: Vec<Slot> = Vec::new();
    let mut error: Option<String> = None;
    let mut volumes = super::volumes::Volumes::default();
    match host {
        None => error = Some("no free address on the node's /24".into()),
        Some(h) => {
            let ip = super::netns::host_ip(h);
            let net = ctx.net.clone();
            let (ns, veth) = (pod_ns.clone(), format!("veth{key}").chars().take(15).collect::<String>());
            let made = tokio::task::spawn_blocking(move || net.add_pod(&ns, ip, &veth)).await;
            match made {
                Ok(Ok(())) => addrs.pod_ip = ip.to_string(),
                Ok(Err(e)) => error = Some(format!("pod network: {e:#}")),
                Err(e) => error = Some(format!("pod network: {e}")),
            }
        }
    }
    ctx.publish(
        &uid,
        PodView {
            name: name.clone(),
            namespace: namespace.clone(),
            netns: pod_ns.clone(),
            ip: addrs.pod_ip.clone(),
            ..Default::default()
        },
    );

    let facts = PodFacts { pod_ip: addrs.pod_ip.clone(), host_ip: addrs.host_ip.clone() };
    if error.is_none() {
        match plan(&pod, &facts, &ctx.images) {
            Ok(plans) => slots = plans.into_iter().map(|p| Slot::new(p, "PodInitializing")).collect(),
            Err(e) => error = Some(e.to_string()),
        }
    }
    if error.is_none() {
        match super::volumes::prepare(&ctx, &pod, &ctx.dir.join("pods").join(&key)).await {
            Ok(v) => volumes = v,
            Err(e) => error = Some(format!("volumes: {e:#}")),
        }
    }
    if let Some(e) = &error {
        tracing::warn!(pod = %name, error = %e, "the pod cannot run");
        let spec = pod.spec.clone().unwrap_or_default();
        slots = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| (c, if c.restart_policy.as_deref() == Some("Always") { Role::Sidecar } else { Role::Init }))
            .chain(spec.containers.iter().map(|c| (c, Role::App)))
            .map(|(c, role)| {
                let mut s = Slot::new(
                    ContainerPlan {
                        name: c.name.clone(),
                        image: c.image.clone().unwrap_or_default(),
                        role,
                        program: Default::default(),
                        args: vec![],
                        env: vec![],
                        user: (0, 0),
                        caps: vec![],
                        no_new_privs: false,
                        mounts: vec![],
                        startup: None,
                        readiness: None,
                        liveness: None,
                    },
                    "CreateContainerConfigError",
                );
                s.state = RunState::Waiting { reason: "CreateContainerConfigError".into(), message: Some(e.clone()) };
                s
            })
            .collect();
    }

    let ip: Option<IpAddr> = addrs.pod_ip.parse().ok();
    let log_dir = ctx.dir.join("logs");
    let mut last: Option<PodStatus> = None;
    let mut next_init = 0usize;
    let mut init_failed = false;
    loop {
        let deleting = rx.has_changed().is_err() || rx.borrow_and_update().metadata.deletion_timestamp.is_some();
        if deleting {
            break;
        }
        let now = Instant::now();
        if error.is_none() {
            // Exits and restarts.
            for s in &mut slots {
                let Some(child) = &s.child else { continue };
                let Some(status) = child.status() else { continue };
                let started_at = match &s.state {
                    RunState::Running { started_at } => started_at.clone(),
                    _ => Time(Timestamp::now()),
                };
                let exit_code = status
                    .code()
                    .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
                s.state = RunState::Terminated { exit_code, started_at, finished_at: Time(Timestamp::now()) };
                ctx.event(&uid, format!("exit {} {exit_code}", s.plan.name));
                s.child = None;
                s.ready = false;
                let restart = match s.plan.role {
                    // A failed init container is not retried (a kubelet would, with
                    // back-off, unless restartPolicy is Never).
                    Role::Init => false,
                    Role::Sidecar => true,
                    Role::App => restart_policy == "Always" || (restart_policy == "OnFailure" && exit_code != 0),
                };
                if restart {
                    s.restart_at = Some(now + RESTART_BACKOFF);
                }
                if s.plan.role == Role::Init && exit_code != 0 {
                    init_failed = true;
                }
            }
            // Start in order.
            while !init_failed && next_init < slots.len() && slots[next_init].plan.role != Role::App {
                let s = &mut slots[next_init];
                if s.child.is_none() && matches!(s.state, RunState::Waiting { .. }) {
                    start(&ctx, s, &pod_ns, &name, &volumes, &log_dir, &uid);
                }
                match (&s.plan.role, &s.state) {
                    (Role::Init, RunState::Terminated { exit_code: 0, .. }) => next_init += 1,
                    (Role::Sidecar, RunState::Running { .. }) if s.started => next_init += 1,
                    _ => break,
                }
            }
            if !init_failed && next_init >= slots.iter().filter(|s| s.plan.role != Role::App).count() {
                for s in slots.iter_mut().filter(|s| s.plan.role == Role::App) {
                    if s.child.is_none() && matches!(s.state, RunState::Waiting { .. }) {
                        start(&ctx, s, &pod_ns, &name, &volumes, &log_dir, &uid);
                    }
                }
            }
            for s in &mut slots {
                if s.restart_at.is_some_and(|t| now >= t) {
                    s.restart_at = None;
                    s.restarts += 1;
                    start(&ctx, s, &pod_ns, &name, &volumes, &log_dir, &uid);
                }
            }
            // Probes.
            if let Some(ip) = ip {
                for s in &mut slots {
                    let was = s.started;
                    probe(s, ip, now).await;
                    if s.started && !was && s.plan.startup.is_some() {
                        ctx.event(&uid, format!("started {}", s.plan.name));
                    }
                }
            }
        }
        let observed: Vec<Observed> = slots.iter().map(Slot::observed).collect();
        let status = pod_status(&observed, &restart_policy, &addrs, &start_time);
        if last.as_ref() != Some(&status) {
            let patch = json!({"status": status});
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => last = Some(status),
                Err(e) => tracing::warn!(pod = %name, error = %e, "reporting the pod's status"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = rx.changed() => {}
        }
    }

    // Graceful stop: apps, then sidecars in reverse order.
    let latest = rx.borrow().clone();
    let gone = rx.has_changed().is_err() && latest.metadata.deletion_timestamp.is_none();
    let grace = latest
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| latest.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(30);
    let deadline = Instant::now() + Duration::from_secs(grace);
    let apps: Vec<(&str, &mesh_process::Child)> = slots
        .iter()
        .filter(|s| s.plan.role == Role::App)
        .filter_map(|s| Some((s.plan.name.as_str(), s.child.as_ref()?)))
        .collect();
    stop(&ctx, &uid, &apps, deadline).await;
    for s in slots.iter().rev().filter(|s| s.plan.role != Role::App) {
        if let Some(c) = &s.child {
            stop(&ctx, &uid, &[(&s.plan.name, c)], deadline.max(Instant::now() + Duration::from_secs(1))).await;
        }
    }
    drop(slots);
    let ns = pod_ns.clone();
    let _ = tokio::task::spawn_blocking(move || super::netns::destroy_netns(&ns)).await;
    if let Some(h) = host {
        ctx.free_host(h);
    }
    volumes.cleanup();
    ctx.finished(&uid);
    if !gone {
        let dp = DeleteParams::default()
            .grace_period(0)
            .preconditions(mesh_kube::api::kube::api::Preconditions { uid: Some(uid.clone()), resource_version: None });
        if let Err(e) = api.delete(&name, &dp).await {
            tracing::warn!(pod = %name, error = %e, "deleting the terminated pod");
        }
    }
}

fn start(
    ctx: &Ctx,
    s: &mut Slot,
    pod_ns: &str,
    hostname: &str,
    volumes: &super::volumes::Volumes,
    log_dir: &std::path::Path,
    uid: &str,
) {
    let mounts: Vec<BindMount> = s
        .plan
        .mounts
        .iter()
        .filter_map(|m| {
            volumes.get(&m.volume).map(|src| BindMount {
                source: src.to_path_buf(),
                target: m.path.clone(),
                read_only: m.read_only,
            })
        })
        .collect();
    let log = log_dir.join(format!("{hostname}-{}.log", s.plan.name));
    match spawn(&s.plan, pod_ns, hostname, &mounts, &log) {
        Ok(child) => {
            let now = Instant::now();
            ctx.event(uid, format!("start {}", s.plan.name));
            ctx.record_pid(uid, &s.plan.name, child.pid());
            s.state = RunState::Running { started_at: Time(Timestamp::now()) };
            s.started = s.plan.startup.is_none();
            s.ready = false;
            s.startup = s.plan.startup.clone().map(|p| Tracker::new(p, now));
            s.readiness = s.plan.readiness.clone().map(|p| Tracker::new(p, now));
            s.liveness = s.plan.liveness.clone().map(|p| Tracker::new(p, now));
            s.child = Some(child);
        }
        Err(e) => {
            s.state = RunState::Waiting { reason: "RunContainerError".into(), message: Some(format!("{e:#}")) };
        }
    }
}

/// Runs the container's due probes and applies their verdicts.
async fn probe(s: &mut Slot, ip: IpAddr, now: Instant) {
    if !s.running() || s.plan.role == Role::Init {
        return;
    }
    if !s.started {
        if let Some(t) = &mut s.startup
            && t.due(now)
        {
            let r = attempt(ip, t.spec()).await;
            match t.record(now, r) {
                Verdict::Passed => s.started = true,
                Verdict::Failed => kill(s),
                Verdict::Unchanged => {}
            }
        }
        return;
    }
    match &mut s.readiness {
        Some(t) => {
            if t.due(now) {
                let r = attempt(ip, t.spec()).await;
                t.record(now, r);
            }
            s.ready = t.passing();
        }
        None => s.ready = true,
    }
    if let Some(t) = &mut s.liveness
        && t.due(now)
    {
        let r = attempt(ip, t.spec()).await;
        if t.record(now, r) == Verdict::Failed {
            kill(s);
        }
    }
}

/// A failed startup or liveness probe: the container is killed (and
/// restarted by the exit handling).
fn kill(s: &Slot) {
    if let Some(c) = &s.child {
        let _ = c.signal(mesh_process::signal::SIGKILL);
    }
}

/// SIGTERM to each, then SIGKILL to those still running at `deadline`.
async fn stop(ctx: &Ctx, uid: &str, children: &[(&str, &mesh_process::Child)], deadline: Instant) {
    for (name, c) in children {
        if c.signal(mesh_process::signal::SIGTERM).unwrap_or(false) {
            ctx.event(uid, format!("term {name}"));
        }
    }
    for (name, c) in children {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, c.exited()).await.is_err() {
            let _ = c.signal(mesh_process::signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), c.exited()).await;
        }
        ctx.event(uid, format!("stopped {name}"));
    }
}
