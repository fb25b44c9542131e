//! Start-up: launch the control plane, then every replica (app + sidecar)
//! and the traffic sidecar, and wait until all of them are ready.
//!
//! Ports are picked free beforehand and released for the child to bind, so
//! another process may take one in between. A child that dies of that
//! ("Address already in use") is started again, with its group (a replica's
//! app and sidecar), on new ports, a few times at most.

use super::monitor::{self, Probe};
use super::plan::{Plan, Service};
use anyhow::anyhow;
use mesh_process::{Exited, Supervisor};
use std::time::Duration;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

/// Restarts allowed after a port was taken under a child.
const PORT_RETRIES: usize = 3;

/// SIGINT and SIGTERM, installed before the first child starts.
#[derive(Debug)]
pub struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    /// Takes over SIGINT and SIGTERM.
    pub fn install() -> anyhow::Result<Self> {
        let int = signal(SignalKind::interrupt()).map_err(|e| anyhow!("cannot handle SIGINT: {e}"))?;
        let term = signal(SignalKind::terminate()).map_err(|e| anyhow!("cannot handle SIGTERM: {e}"))?;
        Ok(Self { int, term })
    }

    /// The next signal's name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Why start-up did not finish.
#[derive(Debug)]
pub enum Interrupted {
    /// The user asked to stop.
    Signal(&'static str),
    /// Anything else; the message says what.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Interrupted {
    fn from(e: anyhow::Error) -> Self {
        Interrupted::Failed(e)
    }
}

/// Why waiting on probes stopped.
enum Wait {
    Exited(Exited),
    Signal(&'static str),
    TimedOut(Vec<(String, String)>),
}

/// A message for a child that exited when it should not have: its name,
/// exit status, log file and the log's last lines.
pub fn crash_message(ex: &Exited) -> anyhow::Error {
    anyhow!("{ex}")
}

/// Whether a child died because a port it was given was taken meanwhile.
fn address_in_use(ex: &Exited) -> bool {
    // The whole log's end, not only the tail: a backtrace may follow the error.
    let log = std::fs::read(&ex.log).unwrap_or_default();
    let log = String::from_utf8_lossy(&log[log.len().saturating_sub(64 * 1024)..]);
    log.contains("Address already in use") || log.contains("os error 98")
}

/// Runs every probe until all pass, a child exits, a signal arrives or the
/// deadline passes.
async fn wait_for(
    probes: &[Probe],
    sup: &mut Supervisor,
    signals: &mut Signals,
    deadline: Instant,
) -> Result<(), Wait> {
    let mut pending: Vec<&Probe> = probes.iter().collect();
    loop {
        let mut failing = Vec::new();
        for p in pending {
            if let Err(why) = p.check().await {
                failing.push((p, why));
            }
        }
        if failing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Wait::TimedOut(failing.into_iter().map(|(p, why)| (p.label(), why)).collect()));
        }
        pending = failing.into_iter().map(|(p, _)| p).collect();
        tokio::select! {
            ex = sup.next_exit() => return Err(Wait::Exited(ex)),
            sig = signals.recv() => return Err(Wait::Signal(sig)),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

fn timed_out(timeout: Duration, what: &[(String, String)]) -> anyhow::Error {
    let lines: Vec<String> = what.iter().map(|(label, why)| format!("  - {label}: {why}")).collect();
    anyhow!("not ready after {:?} (--startup-timeout), still waiting for:\n{}", timeout, lines.join("\n"))
}

/// Which processes stand and fall together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Replica(usize),
    Traffic,
}

/// Starts the whole mesh and waits until it is ready.
pub async fn start(
    plan: &mut Plan,
    sup: &mut Supervisor,
    signals: &mut Signals,
    timeout: Duration,
) -> Result<(), Interrupted> {
    let deadline = Instant::now() + timeout;
    let mut retries = 0;

    // The control plane first: every proxy is given its address.
    loop {
        let index = sup.spawn(plan.control_spec()).map_err(anyhow::Error::from)?;
        let probe = [Probe::Ready { label: "control plane".to_string(), admin: plan.control_admin }];
        match wait_for(&probe, sup, signals, deadline).await {
            Ok(()) => break,
            Err(Wait::Exited(ex)) if address_in_use(&ex) && retries < PORT_RETRIES => {
                retries += 1;
                sup.retire(&[index], Duration::from_secs(1)).await;
                plan.rebind_control()?;
            }
            Err(e) => return Err(interrupted(e, timeout)),
        }
    }

    // Then every replica and the traffic sidecar, all at once.
    let mut members: Vec<(usize, Group)> = Vec::new();
    for i in 0..plan.replicas.len() {
        spawn_group(plan, sup, Group::Replica(i), &mut members)?;
    }
    spawn_group(plan, sup, Group::Traffic, &mut members)?;
    loop {
        let mut probes = monitor::replica_probes(&plan.replicas);
        probes.push(Probe::Ready { label: "traffic proxy".to_string(), admin: plan.traffic_admin });
        probes.push(Probe::Endpoints {
            label: "traffic proxy".to_string(),
            admin: plan.traffic_admin,
            target: Service::Web.target(),
            want: monitor::inbound_addrs(&plan.replicas, Service::Web),
        });
        match wait_for(&probes, sup, signals, deadline).await {
            Ok(()) => return Ok(()),
            Err(Wait::Exited(ex)) if address_in_use(&ex) && retries < PORT_RETRIES => {
                retries += 1;
                let Some(&(_, group)) = members.iter().find(|(i, _)| Some(*i) == ex.index) else {
                    return Err(Interrupted::Failed(crash_message(&ex)));
                };
                let indexes: Vec<usize> = members.iter().filter(|(_, g)| *g == group).map(|(i, _)| *i).collect();
                members.retain(|(_, g)| *g != group);
                sup.retire(&indexes, Duration::from_secs(2)).await;
                match group {
                    Group::Replica(i) => {
                        plan.rebind_replica(i)?;
                        plan.write_registry()?;
                    }
                    Group::Traffic => plan.rebind_traffic()?,
                }
                spawn_group(plan, sup, group, &mut members)?;
            }
            Err(e) => return Err(interrupted(e, timeout)),
        }
    }
}

fn interrupted(wait: Wait, timeout: Duration) -> Interrupted {
    match wait {
        Wait::Exited(ex) => Interrupted::Failed(crash_message(&ex)),
        Wait::Signal(sig) => Interrupted::Signal(sig),
        Wait::TimedOut(what) => Interrupted::Failed(timed_out(timeout, &what)),
    }
}

fn spawn_group(
    plan: &Plan,
    sup: &mut Supervisor,
    group: Group,
    members: &mut Vec<(usize, Group)>,
) -> anyhow::Result<()> {
    // Join tokens are single-use: a proxy started again needs a fresh one.
    let specs = match group {
        Group::Replica(i) => {
            let r = plan.replicas.get(i).ok_or_else(|| anyhow!("no replica {i}"))?;
            plan.write_token(&r.name, r.service.name())?;
            vec![plan.proxy_spec(r), plan.app_spec(r)]
        }
        Group::Traffic => {
            plan.write_token(Plan::TRAFFIC, Plan::TRAFFIC)?;
            vec![plan.traffic_spec()]
        }
    };
    for spec in specs {
        members.push((sup.spawn(spec)?, group));
    }
    Ok(())
}
