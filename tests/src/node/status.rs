//! A Pod's status from what its containers are doing, without I/O: phase,
//! the four conditions, and the container statuses, as a kubelet reports
//! them (the API server and the EndpointSlice controller read these).

use super::plan::Role;
use mesh_kube::api::k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP,
    PodCondition, PodIP, PodStatus,
};
use mesh_kube::api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What a container is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Not started: a reason (`PodInitializing`, `CreateContainerConfigError`...) and a message.
    Waiting { reason: String, message: Option<String> },
    /// Its process runs since then.
    Running { started_at: Time },
    /// Its process exited.
    Terminated { exit_code: i32, started_at: Time, finished_at: Time },
}

/// One container as the node observes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Its name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// Init, sidecar or app.
    pub role: Role,
    /// What it does now.
    pub state: RunState,
    /// Times its process was started again.
    pub restarts: u32,
    /// Its startup probe passed (or it has none and runs).
    pub started: bool,
    /// Its readiness probe passes (or it has none and started).
    pub ready: bool,
}

/// Where the pod is on the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Its IP on the bridge (empty until its namespace exists).
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
}

/// The pod's status: `restart_policy` is the pod's (`Always` by default).
pub fn pod_status(containers: &[Observed], restart_policy: &str, addrs: &Addresses, start_time: &Time) -> PodStatus {
    let init_ok = |o: &Observed| match o.role {
        Role::Init => matches!(o.state, RunState::Terminated { exit_code: 0, .. }),
        Role::Sidecar => o.started && matches!(o.state, RunState::Running { .. }),
        Role::App => true,
    };
    let init_failed = containers
        .iter()
        .any(|o| o.role == Role::Init && matches!(o.state, RunState::Terminated { exit_code, .. } if exit_code != 0));
    let initialized = containers.iter().all(init_ok);
    let apps: Vec<&Observed> = containers.iter().filter(|o| o.role == Role::App).collect();
    let containers_ready = initialized
        && containers
            .iter()
            .filter(|o| o.role != Role::Init)
            .all(|o| o.ready && matches!(o.state, RunState::Running { .. }));
    let all_apps_done = !apps.is_empty() && apps.iter().all(|o| matches!(o.state, RunState::Terminated { .. }));
    let phase = if init_failed {
        if restart_policy == "Never" { "Failed" } else { "Pending" }
    } else if all_apps_done && restart_policy != "Always" {
        if apps.iter().all(|o| matches!(o.state, RunState::Terminated { exit_code: 0, .. })) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if initialized && apps.iter().any(|o| !matches!(o.state, RunState::Waiting { .. })) {
        "Running"
    } else {
        "Pending"
    };
    let condition = |kind: &str, ok: bool, reason: Option<&str>| PodCondition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: if ok { None } else { reason.map(str::to_string) },
        ..Default::default()
    };
    let status = |o: &Observed| ContainerStatus {
        name: o.name.clone(),
        image: o.image.clone(),
        image_id: String::new(),
        ready: o.ready,
        restart_count: i32::try_from(o.restarts).unwrap_or(i32::MAX),
        started: Some(o.started),
        state: Some(state(&o.state)),
        ..Default::default()
    };
    let ip_known = !addrs.pod_ip.is_empty();
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![
            condition("PodScheduled", true, None),
            condition("Initialized", initialized, Some("ContainersNotInitialized")),
            condition("ContainersReady", containers_ready, Some("ContainersNotReady")),
            condition("Ready", containers_ready, Some("ContainersNotReady")),
        ]),
        host_ip: Some(addrs.host_ip.clone()),
        host_ips: Some(vec![HostIP { ip: addrs.host_ip.clone() }]),
        pod_ip: ip_known.then(|| addrs.pod_ip.clone()),
        pod_ips: ip_known.then(|| vec![PodIP { ip: addrs.pod_ip.clone() }]),
        start_time: Some(start_time.clone()),
        init_container_statuses: Some(containers.iter().filter(|o| o.role != Role::App).map(status).collect()),
        container_statuses: Some(apps.iter().map(|o| status(o)).collect()),
        ..Default::default()
    }
}

fn state(s: &RunState) -> ContainerState {
    match s {
        RunState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.clone()), message: message.clone() }),
            ..Default::default()
        },
        RunState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning { started_at: Some(started_at.clone()) }),
            ..Default::default()
        },
        RunState::Terminated { exit_code, started_at, finished_at } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(if *exit_code == 0 { "Completed" } else { "Error" }.into()),
                started_at: Some(started_at.clone()),
                finished_at: Some(finished_at.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_kube::api::k8s_openapi::jiff::Timestamp;

    fn t() -> Time {
        Time(Timestamp::UNIX_EPOCH)
    }

    fn obs(name: &str, role: Role, state: RunState, ready: bool) -> Observed {
        Observed { name: name.into(), image: "img".into(), role, state, restarts: 0, started: ready, ready }
    }

    fn running() -> RunState {
        RunState::Running { started_at: t() }
    }

    fn exited(code: i32) -> RunState {
        RunState::Terminated { exit_code: code, started_at: t(), finished_at: t() }
    }

    fn cond(s: &PodStatus, kind: &str) -> String {
        s.conditions.iter().flatten().find(|c| c.type_ == kind).map(|c| c.status.clone()).unwrap_or_default()
    }

    fn addrs() -> Addresses {
        Addresses { pod_ip: "10.244.0.2".into(), host_ip: "10.244.0.1".into() }
    }

    /// Catches a pod reported Ready while one container is not (the
    /// EndpointSlice would route to a pod that cannot answer).
    #[test]
    fn ready_only_when_every_container_is() {
        let c = [
            obs("init", Role::Init, exited(0), false),
            obs("proxy", Role::Sidecar, running(), true),
            obs("app", Role::App, running(), false),
        ];
        let s = pod_status(&c, "Always", &addrs(), &t());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Initialized"), "True");
        assert_eq!(cond(&s, "Ready"), "False");
        let mut c = c;
        c[2].ready = true;
        let s = pod_status(&c, "Always", &addrs(), &t());
        assert_eq!((cond(&s, "ContainersReady"), cond(&s, "Ready")), ("True".into(), "True".into()));
        assert_eq!(s.pod_ips.unwrap()[0].ip, "10.244.0.2");
        assert_eq!(s.init_container_statuses.unwrap().len(), 2, "init containers and sidecars");
        assert_eq!(s.container_statuses.unwrap().len(), 1);
    }

    /// Catches a failed init container hidden (Init:Error must show, and
    /// the app must not count as initialized).
    #[test]
    fn a_failed_init_container_keeps_the_pod_pending_or_fails_it() {
        let c = [
            obs("init", Role::Init, exited(3), false),
            obs("app", Role::App, RunState::Waiting { reason: "PodInitializing".into(), message: None }, false),
        ];
        let s = pod_status(&c, "Always", &addrs(), &t());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized"), "False");
        let init = &s.init_container_statuses.unwrap()[0];
        let term = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((term.exit_code, term.reason.as_deref()), (3, Some("Error")));
        assert_eq!(pod_status(&c, "Never", &addrs(), &t()).phase.as_deref(), Some("Failed"));
    }

    /// Catches a sidecar that is running but not started (startup probe
    /// pending) counted as initialized: apps would start too early.
    #[test]
    fn a_sidecar_initializes_once_started() {
        let mut proxy = obs("proxy", Role::Sidecar, running(), false);
        let app = obs("app", Role::App, RunState::Waiting { reason: "PodInitializing".into(), message: None }, false);
        let s = pod_status(&[proxy.clone(), app.clone()], "Always", &addrs(), &t());
        assert_eq!((s.phase.as_deref(), cond(&s, "Initialized").as_str()), (Some("Pending"), "False"));
        proxy.started = true;
        let s = pod_status(&[proxy, app], "Always", &addrs(), &t());
        assert_eq!(cond(&s, "Initialized"), "True");
    }

    /// Catches jobs' pods never finishing: apps that exited end the pod
    /// unless it restarts them.
    #[test]
    fn exited_apps_end_the_pod_unless_restarted() {
        let c = [obs("a", Role::App, exited(0), false), obs("b", Role::App, exited(1), false)];
        assert_eq!(pod_status(&c, "Never", &addrs(), &t()).phase.as_deref(), Some("Failed"));
        assert_eq!(pod_status(&c[..1], "OnFailure", &addrs(), &t()).phase.as_deref(), Some("Succeeded"));
        assert_eq!(pod_status(&c, "Always", &addrs(), &t()).phase.as_deref(), Some("Running"));
        let no_ip = pod_status(&c, "Always", &Addresses::default(), &t());
        assert!(no_ip.pod_ip.is_none() && no_ip.pod_ips.is_none(), "no IP reported before the namespace exists");
    }
}
