//! One pod's life on the node: its namespace, its containers started in
//! order (init containers to completion, native sidecars until started,
//! then apps), probes, restarts, status reported back, and on deletion the
//! graceful stop (apps first, then sidecars in reverse), the namespace
//! removed and the Pod deleted for good.

use super::containers::{BindMount, spawn};
use super::plan::{ContainerPlan, PodFacts, Role, plan};
use super::probes::{Tracker, Verdict, attempt};
use super::status::{Addresses, Observed, RunState, pod_status};
use super::volumes::{self, Volumes};
use super::{Ctx, PodView};
use mesh_kube::api::k8s_openapi::api::core::v1::{Pod, PodStatus};
use mesh_kube::api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mesh_kube::api::k8s_openapi::jiff::Timestamp;
use mesh_kube::api::kube::api::Preconditions;
use mesh_kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The `kubernetes` Service's ClusterIP: the first address of the API
/// server's `--service-cluster-ip-range` (10.96.0.0/16 in the harness).
const KUBERNETES_VIP: &str = "10.96.0.1";

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

/// A pod's worker state: what it made and what its containers do.
struct Worker {
    ctx: Arc<Ctx>,
    api: Api<Pod>,
    uid: String,
    name: String,
    /// The pod's network namespace.
    pod_ns: String,
    /// Its host number on the node's /24, once allocated.
    host: Option<u8>,
    addrs: Addresses,
    start_time: Time,
    restart_policy: String,
    slots: Vec<Slot>,
    volumes: Volumes,
    /// Why the pod cannot run (every container waits with this message).
    error: Option<String>,
    /// The first init container or sidecar not yet done.
    next_init: usize,
    init_failed: bool,
    /// The status last written.
    last: Option<PodStatus>,
}

/// The pod's worker: runs until the pod is deleted (its `rx` shows a
/// deletion timestamp, or the sender is dropped because the Pod is gone).
pub(super) async fn run(ctx: Arc<Ctx>, mut rx: watch::Receiver<Pod>) {
    let pod = rx.borrow().clone();
    let mut w = Worker::setup(ctx, &pod).await;
    loop {
        let deleting = rx.has_changed().is_err() || rx.borrow_and_update().metadata.deletion_timestamp.is_some();
        if deleting {
            break;
        }
        if w.error.is_none() {
            let now = Instant::now();
            w.reap(now);
            w.advance(now);
            w.probe_all(now).await;
        }
        w.report().await;
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = rx.changed() => {}
        }
    }
    let latest = rx.borrow().clone();
    let gone = rx.has_changed().is_err() && latest.metadata.deletion_timestamp.is_none();
    w.terminate(&latest, gone).await;
}

impl Worker {
    /// The pod's network, containers' plan and volumes; what fails is
    /// kept as the reason the pod cannot run.
    async fn setup(ctx: Arc<Ctx>, pod: &Pod) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let key: String = uid.chars().filter(char::is_ascii_alphanumeric).take(10).collect();
        let restart_policy =
            pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into());
        let mut w = Worker {
            api: Api::namespaced(ctx.client.clone(), &namespace),
            pod_ns: ctx.net.pod_ns(&key),
            host: ctx.alloc_host(),
            addrs: Addresses { pod_ip: String::new(), host_ip: ctx.net.node_ip().to_string() },
            start_time: Time(Timestamp::now()),
            restart_policy,
            slots: Vec::new(),
            volumes: Volumes::default(),
            error: None,
            next_init: 0,
            init_failed: false,
            last: None,
            uid,
            name,
            ctx,
        };
        match w.host {
            None => w.error = Some("no free address on the node's /24".into()),
            Some(h) => {
                let ip = super::netns::host_ip(h);
                let net = w.ctx.net.clone();
                let (ns, veth) = (w.pod_ns.clone(), format!("veth{key}").chars().take(15).collect::<String>());
                match tokio::task::spawn_blocking(move || net.add_pod(&ns, ip, &veth)).await {
                    Ok(Ok(())) => {
                        w.addrs.pod_ip = ip.to_string();
                        if let Err(e) = super::services::attach(&w.ctx, &w.pod_ns) {
                            w.error = Some(format!("the pod's /etc/hosts: {e:#}"));
                        }
                    }
                    Ok(Err(e)) => w.error = Some(format!("pod network: {e:#}")),
                    Err(e) => w.error = Some(format!("pod network: {e}")),
                }
            }
        }
        let view = PodView {
            name: w.name.clone(),
            namespace,
            netns: w.pod_ns.clone(),
            ip: w.addrs.pod_ip.clone(),
            ..Default::default()
        };
        w.ctx.publish(&w.uid, view);
        if w.error.is_none() {
            let facts = PodFacts { pod_ip: w.addrs.pod_ip.clone(), host_ip: w.addrs.host_ip.clone() };
            match plan(pod, &facts, &w.ctx.images) {
                Ok(plans) => {
                    w.slots = plans
                        .into_iter()
                        .map(|mut p| {
                            // As a kubelet does: where in-cluster clients find the API server.
                            let kube =
                                [("KUBERNETES_SERVICE_HOST", KUBERNETES_VIP), ("KUBERNETES_SERVICE_PORT", "443")];
                            p.env.splice(0..0, kube.map(|(k, v)| (k.to_string(), v.to_string())));
                            Slot::new(p, "PodInitializing")
                        })
                        .collect();
                }
                Err(e) => w.error = Some(e.to_string()),
            }
        }
        if w.error.is_none() {
            match volumes::prepare(&w.ctx, pod, &w.ctx.dir.join("pods").join(&key)).await {
                Ok(v) => w.volumes = v,
                Err(e) => w.error = Some(format!("volumes: {e:#}")),
            }
        }
        if let Some(e) = &w.error {
            tracing::warn!(pod = %w.name, error = %e, "the pod cannot run");
            w.slots = unrunnable(pod, e);
        }
        w
    }

    /// Records exits and schedules restarts.
    fn reap(&mut self, now: Instant) {
        for s in &mut self.slots {
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
            self.ctx.event(&self.uid, format!("exit {} {exit_code}", s.plan.name));
            s.child = None;
            s.ready = false;
            let restart = match s.plan.role {
                // A failed init container is not retried (a kubelet would, with
                // back-off, unless restartPolicy is Never).
                Role::Init => false,
                Role::Sidecar => true,
                Role::App => self.restart_policy == "Always" || (self.restart_policy == "OnFailure" && exit_code != 0),
            };
            if restart {
                s.restart_at = Some(now + RESTART_BACKOFF);
            }
            if s.plan.role == Role::Init && exit_code != 0 {
                self.init_failed = true;
            }
        }
    }

    /// Starts what is due: the next init container or sidecar once the one
    /// before is done (exited 0, or started), the apps once all are, and
    /// restarts whose back-off has passed.
    fn advance(&mut self, now: Instant) {
        while !self.init_failed
            && self.next_init < self.slots.len()
            && self.slots[self.next_init].plan.role != Role::App
        {
            let i = self.next_init;
            if self.slots[i].child.is_none() && matches!(self.slots[i].state, RunState::Waiting { .. }) {
                self.start(i);
            }
            let s = &self.slots[i];
            match (&s.plan.role, &s.state) {
                (Role::Init, RunState::Terminated { exit_code: 0, .. }) => self.next_init += 1,
                (Role::Sidecar, RunState::Running { .. }) if s.started => self.next_init += 1,
                _ => break,
            }
        }
        let inits = self.slots.iter().filter(|s| s.plan.role != Role::App).count();
        if !self.init_failed && self.next_init >= inits {
            for i in 0..self.slots.len() {
                let s = &self.slots[i];
                if s.plan.role == Role::App && s.child.is_none() && matches!(s.state, RunState::Waiting { .. }) {
                    self.start(i);
                }
            }
        }
        for i in 0..self.slots.len() {
            if self.slots[i].restart_at.is_some_and(|t| now >= t) {
                self.slots[i].restart_at = None;
                self.slots[i].restarts += 1;
                self.start(i);
            }
        }
    }

    async fn probe_all(&mut self, now: Instant) {
        let Ok(ip) = self.addrs.pod_ip.parse::<IpAddr>() else { return };
        for s in &mut self.slots {
            let was = s.started;
            probe(s, ip, now).await;
            if s.started && !was && s.plan.startup.is_some() {
                self.ctx.event(&self.uid, format!("started {}", s.plan.name));
            }
        }
    }

    /// Writes the pod's status when it changed.
    async fn report(&mut self) {
        let observed: Vec<Observed> = self.slots.iter().map(Slot::observed).collect();
        let status = pod_status(&observed, &self.restart_policy, &self.addrs, &self.start_time);
        if self.last.as_ref() != Some(&status) {
            let patch = json!({"status": status});
            match self.api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => self.last = Some(status),
                Err(e) => tracing::warn!(pod = %self.name, error = %e, "reporting the pod's status"),
            }
        }
    }

    /// Graceful stop (apps, then sidecars in reverse order; SIGKILL after
    /// the grace), the namespace and volumes removed, and unless the Pod is
    /// already `gone`, deleted for good.
    async fn terminate(self, latest: &Pod, gone: bool) {
        let grace = latest
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| latest.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(30);
        let deadline = Instant::now() + Duration::from_secs(grace);
        let (ctx, uid) = (&self.ctx, self.uid.as_str());
        let apps: Vec<(&str, &mesh_process::Child)> = self
            .slots
            .iter()
            .filter(|s| s.plan.role == Role::App)
            .filter_map(|s| Some((s.plan.name.as_str(), s.child.as_ref()?)))
            .collect();
        stop(ctx, uid, &apps, deadline).await;
        for s in self.slots.iter().rev().filter(|s| s.plan.role != Role::App) {
            if let Some(c) = &s.child {
                stop(ctx, uid, &[(&s.plan.name, c)], deadline.max(Instant::now() + Duration::from_secs(1))).await;
            }
        }
        let ns = self.pod_ns.clone();
        super::services::detach(&ns);
        let _ = tokio::task::spawn_blocking(move || super::netns::destroy_netns(&ns)).await;
        if let Some(h) = self.host {
            ctx.free_host(h);
        }
        self.volumes.cleanup();
        ctx.finished(uid);
        if !gone {
            let preconditions = Preconditions { uid: Some(self.uid.clone()), resource_version: None };
            let dp = DeleteParams::default().grace_period(0).preconditions(preconditions);
            if let Err(e) = self.api.delete(&self.name, &dp).await {
                tracing::warn!(pod = %self.name, error = %e, "deleting the terminated pod");
            }
        }
    }

    fn start(&mut self, i: usize) {
        let hostname = self.name.clone();
        start(&self.ctx, &mut self.slots[i], &self.pod_ns, &hostname, &self.volumes, &self.uid);
    }
}

/// Every container waiting with `CreateContainerConfigError` and the reason.
fn unrunnable(pod: &Pod, error: &str) -> Vec<Slot> {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| (c, if c.restart_policy.as_deref() == Some("Always") { Role::Sidecar } else { Role::Init }))
        .chain(spec.containers.iter().map(|c| (c, Role::App)))
        .map(|(c, role)| {
            let plan = ContainerPlan {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                role,
                program: Default::default(),
                args: vec![],
                env: vec![],
                user: (0, 0),
                caps: vec![],
                no_new_privs: false,
                read_only_root: false,
                mounts: vec![],
                startup: None,
                readiness: None,
                liveness: None,
            };
            let mut s = Slot::new(plan, "CreateContainerConfigError");
            s.state =
                RunState::Waiting { reason: "CreateContainerConfigError".into(), message: Some(error.to_string()) };
            s
        })
        .collect()
}

fn start(ctx: &Ctx, s: &mut Slot, pod_ns: &str, hostname: &str, volumes: &Volumes, uid: &str) {
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
    let log = ctx.dir.join("logs").join(format!("{hostname}-{}.log", s.plan.name));
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
