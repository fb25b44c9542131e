//! Leader election on a `coordination.k8s.io/v1` Lease, for what only one
//! control-plane replica may write (status conditions, Events); every
//! replica keeps watching and serving proxies. kube-runtime 5 has no
//! elector, so this is a small one in the manner of client-go's:
//!
//! - a candidate takes the Lease when it is absent, released (no holder), or
//!   unchanged for its whole duration *as observed locally* (the holder's
//!   `renewTime` is never compared with this clock, so clock skew between
//!   nodes does not matter);
//! - the holder renews every [`LeaseConfig::renew_every`]; every write
//!   carries the `resourceVersion` it read, so of two candidates only one wins;
//! - a holder that has not renewed within [`LeaseConfig::renew_deadline`]
//!   (shorter than the duration) stops leading before anyone may take over;
//! - a graceful stop releases the Lease ([`Elector::release`]) so a
//!   successor takes over at once; a crash leaves it to expire. A write
//!   already sent when the replica stops (it may yet land, making this
//!   replica the holder though it never learnt so) runs to its answer in its
//!   own task, and the release waits for it and then asks the Lease, not
//!   this replica's belief, whether it holds it.
//!
//! The decisions are pure ([`observe`], [`decide`], [`still_leading`],
//! [`releases`]); the loop around them is [`Elector::run`].

use crate::crds::FIELD_MANAGER;
use crate::rbac;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

/// Where the Lease is and how it is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's namespace; the client's default (the pod's own in a
    /// cluster) when `None`.
    pub namespace: Option<String>,
    /// The Lease's name.
    pub name: String,
    /// This replica's name in `holderIdentity` (unique per process).
    pub identity: String,
    /// How long a Lease nobody renews stays held (`leaseDurationSeconds`).
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How often a candidate looks at the Lease.
    pub retry_every: Duration,
    /// A holder that has not renewed for this long stops leading (shorter
    /// than `duration`, so it stops before another may take over).
    pub renew_deadline: Duration,
}

/// The Lease the control plane's replicas share.
pub const LEASE_NAME: &str = "mesh-control";

impl LeaseConfig {
    /// The defaults (15 s duration, renewed every 5 s, deadline 10 s,
    /// candidates look every 2 s) for `identity`.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            namespace: None,
            name: LEASE_NAME.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// This process's identity: the pod's name (`POD_NAME`, else `HOSTNAME`,
/// which is the pod's name in a pod) and a random suffix, so two processes
/// never share one.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mesh-control".into());
    format!("{host}_{:08x}", fastrand::u32(..))
}

/// What a read of the Lease says, for the decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `holderIdentity` (`None` or empty: released).
    pub holder: Option<String>,
    /// `leaseDurationSeconds`.
    pub duration: Duration,
    /// `resourceVersion`: changes with every renewal.
    pub version: String,
}

/// A record and when this process first saw it (its local clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The record.
    pub record: Record,
    /// When it was first seen as it is.
    pub since: Instant,
}

/// The observation after reading `record` at `now`: a record seen before
/// keeps the time it was first seen (so its holder's silence is measured).
pub fn observe(previous: Option<Observed>, record: Record, now: Instant) -> Observed {
    match previous {
        Some(p) if p.record == record => p,
        _ => Observed { record, since: now },
    }
}

/// What a replica does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Take the Lease (create it, or write it as its new holder).
    Take,
    /// It holds the Lease: renew it.
    Renew,
    /// Another holds it: look again; it expires in this long if not renewed.
    Wait(Duration),
}

/// The decision for `me` given the Lease as observed (`None`: it does not exist).
pub fn decide(observed: Option<&Observed>, me: &str, now: Instant) -> Decision {
    let Some(o) = observed else { return Decision::Take };
    match o.record.holder.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::Take,
        Some(_) => {
            let expires = o.since + o.record.duration;
            if now >= expires { Decision::Take } else { Decision::Wait(expires - now) }
        }
    }
}

/// Whether a replica that last renewed (or took) the Lease at `renewed`
/// still leads at `now`.
pub fn still_leading(renewed: Option<Instant>, now: Instant, deadline: Duration) -> bool {
    renewed.is_some_and(|at| now.saturating_duration_since(at) < deadline)
}

/// Whether a stopping replica gives up the Lease `record` (read once every
/// write it sent has been answered): when the Lease names it, whatever it
/// believed (a take that landed after it stopped listening names it too).
pub fn releases(record: &Record, me: &str) -> bool {
    record.holder.as_deref() == Some(me)
}

/// Runs the election and says whether this replica leads.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    /// Held by each turn of [`Self::run`] and by a write in flight (in its
    /// own task, so stopping the loop never leaves a sent write unanswered);
    /// [`Self::release`] takes it, so it sees every write's outcome and no
    /// write follows it.
    gate: Arc<Mutex<Gate>>,
}

/// What [`Elector::release`] needs to know of the loop's writes.
#[derive(Debug, Default)]
struct Gate {
    /// A write (create, take or renew) was sent: this replica may hold the Lease.
    sent: bool,
    /// Released: the loop writes no more.
    stopped: bool,
}

/// A write of the Lease by this replica.
enum Write {
    /// Create it, held by this replica.
    Create,
    /// Write it as read, as its holder; `true`: taking it from another.
    Replace(Box<Lease>, bool),
}

impl Elector {
    /// An elector for the Lease `config` names.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        let namespace = config.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        let api = rbac::LEASES.namespaced::<Lease>(&client, &namespace);
        Self { api, config, leading: watch::Sender::new(false), gate: Arc::default() }
    }

    /// Whether this replica leads, as it changes.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Campaigns and renews until dropped or released (API errors are
    /// retried; while they last past the renew deadline this replica does
    /// not lead).
    pub async fn run(&self) {
        let mut observed: Option<Observed> = None;
        let mut renewed: Option<Instant> = None;
        loop {
            let mut gate = Arc::clone(&self.gate).lock_owned().await;
            if gate.stopped {
                // Released: never leads again (the caller stops this future).
                return std::future::pending().await;
            }
            let now = Instant::now();
            match self.api.get_opt(&self.config.name).await {
                Ok(None) => {
                    observed = None;
                    let wrote;
                    (gate, wrote) = self.send(gate, Write::Create).await;
                    if wrote {
                        renewed = Some(now);
                    }
                }
                Ok(Some(lease)) => {
                    let o = observe(observed.take(), record(&lease), now);
                    match decide(Some(&o), &self.config.identity, now) {
                        decision @ (Decision::Take | Decision::Renew) => {
                            let wrote;
                            let write = Write::Replace(Box::new(lease), decision == Decision::Take);
                            (gate, wrote) = self.send(gate, write).await;
                            if wrote {
                                renewed = Some(now);
                            }
                        }
                        Decision::Wait(_) => renewed = None,
                    }
                    observed = Some(o);
                }
                Err(error) => tracing::warn!(%error, lease = %self.config.name, "cannot read the leader Lease"),
            }
            let leading = still_leading(renewed, Instant::now(), self.config.renew_deadline);
            if !leading {
                renewed = None;
            }
            // Under the gate: a release cannot come between the write and this.
            self.set_leading(leading);
            drop(gate);
            let pause = if leading { self.config.renew_every } else { self.config.retry_every };
            tokio::time::sleep(pause).await;
        }
    }

    /// Sends `write` from a task of its own, which keeps `gate` until the
    /// answer: dropping [`Self::run`] meanwhile (a stop) does not cancel a
    /// write the API server may already apply, and [`Self::release`] waits
    /// for it. Gives the gate back with whether the write succeeded.
    async fn send(&self, mut gate: OwnedMutexGuard<Gate>, write: Write) -> (OwnedMutexGuard<Gate>, bool) {
        gate.sent = true;
        let api = self.api.clone();
        let (name, identity, seconds) = (self.config.name.clone(), self.config.identity.clone(), self.seconds());
        let task = tokio::spawn(async move {
            let wrote = match write {
                Write::Create => create(&api, &name, &identity, seconds).await,
                Write::Replace(lease, take) => replace(&api, &name, *lease, &identity, seconds, take).await,
            };
            (gate, wrote)
        });
        match task.await {
            Ok(done) => done,
            // Only when the runtime shuts down; the guard went with the task.
            Err(_) => (Arc::clone(&self.gate).lock_owned().await, false),
        }
    }

    /// Gives the Lease up when this replica holds it (a graceful stop), so
    /// another takes over without waiting for it to expire. It stops
    /// leading at once, waits for a write in flight, then reads the Lease:
    /// a take sent just before the stop may have made this replica the
    /// holder without it ever leading. [`Self::run`] writes no more after.
    pub async fn release(&self) {
        self.set_leading(false);
        let mut gate = self.gate.lock().await;
        gate.stopped = true;
        self.set_leading(false);
        if !gate.sent {
            return; // never wrote: cannot hold it (and a read-only replica asks nothing)
        }
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else { return };
        if !releases(&record(&lease), &self.config.identity) {
            return;
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.metadata.managed_fields = None;
        match self.api.replace(&self.config.name, &post_params(), &lease).await {
            Ok(_) => tracing::info!(identity = %self.config.identity, "released the leader Lease"),
            Err(error) => tracing::warn!(%error, "cannot release the leader Lease; it expires on its own"),
        }
    }

    fn set_leading(&self, leading: bool) {
        let was = self.leading.send_replace(leading);
        if was != leading {
            let identity = &self.config.identity;
            if leading {
                tracing::info!(%identity, lease = %self.config.name, "leading: this replica writes status and Events");
            } else {
                tracing::info!(%identity, lease = %self.config.name, "not leading: another replica writes status and Events");
            }
        }
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// Creates the Lease `name` held by `identity`; `false` when another created it first.
async fn create(api: &Api<Lease>, name: &str, identity: &str, seconds: i32) -> bool {
    let stamp = MicroTime(Timestamp::now());
    let lease = Lease {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.into()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(stamp.clone()),
            renew_time: Some(stamp),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    match api.create(&post_params(), &lease).await {
        Ok(_) => true,
        Err(error) => {
            tracing::debug!(%error, "leader Lease not created (another replica may have been first)");
            false
        }
    }
}

/// Writes the Lease `name` as read (its `resourceVersion` makes the write fail if
/// anyone wrote since) with `identity` renewing or taking it.
async fn replace(api: &Api<Lease>, name: &str, mut lease: Lease, identity: &str, seconds: i32, take: bool) -> bool {
    let stamp = MicroTime(Timestamp::now());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if take {
        if spec.holder_identity.as_deref() != Some(identity) {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(identity.into());
        spec.acquire_time = Some(stamp.clone());
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(stamp);
    lease.metadata.managed_fields = None;
    match api.replace(name, &post_params(), &lease).await {
        Ok(_) => true,
        Err(error) => {
            tracing::debug!(%error, take, "leader Lease not written (another replica wrote it first)");
            false
        }
    }
}

fn post_params() -> PostParams {
    PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) }
}

/// The decisions' view of a Lease.
fn record(lease: &Lease) -> Record {
    let spec = lease.spec.as_ref();
    let seconds = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(0);
    Record {
        holder: spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()),
        duration: Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, version: &str) -> Record {
        Record { holder: Some(holder.into()), duration: Duration::from_secs(15), version: version.into() }
    }

    #[allow(non_snake_case)]
    fn S(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Catches: a candidate taking a Lease another holder keeps renewing
    /// (two leaders), or never taking one whose holder went silent (no
    /// leader after a crash), or measuring silence from the first sighting
    /// of *any* record instead of the last change.
    #[test]
    fn a_candidate_takes_over_only_after_the_holder_is_silent_for_the_duration() {
        let t0 = Instant::now();
        let o = observe(None, held_by("a", "1"), t0);
        assert_eq!(decide(Some(&o), "b", t0), Decision::Wait(S(15)));
        // The holder renews at t0+10: the new record restarts the clock.
        let o = observe(Some(o), held_by("a", "2"), t0 + S(10));
        assert_eq!(o.since, t0 + S(10));
        assert_eq!(decide(Some(&o), "b", t0 + S(20)), Decision::Wait(S(5)), "renewed at 10: held until 25");
        // Then silence: the same record seen again does not restart it.
        let o = observe(Some(o), held_by("a", "2"), t0 + S(24));
        assert_eq!(o.since, t0 + S(10));
        assert_eq!(decide(Some(&o), "b", t0 + S(24)), Decision::Wait(S(1)));
        assert_eq!(decide(Some(&o), "b", t0 + S(25)), Decision::Take, "silent for the whole duration: taken");
    }

    /// Catches: the holder treating its own Lease as someone else's (it
    /// would stop renewing and lose it), and a released or absent Lease not
    /// taken at once (a graceful stop would leave no leader for 15 s).
    #[test]
    fn holders_renew_and_released_or_absent_leases_are_taken_at_once() {
        let t0 = Instant::now();
        let mine = observe(None, held_by("a", "1"), t0);
        assert_eq!(decide(Some(&mine), "a", t0 + S(100)), Decision::Renew);
        let released = observe(None, Record { holder: None, duration: S(1), version: "3".into() }, t0);
        assert_eq!(decide(Some(&released), "b", t0), Decision::Take);
        assert_eq!(decide(None, "b", t0), Decision::Take);
    }

    /// Catches: a holder that cannot renew (API server unreachable, lost
    /// the race) still writing after its deadline, which is shorter than
    /// the duration others wait, so two replicas never lead at once.
    #[test]
    fn a_holder_stops_leading_at_its_renew_deadline() {
        let t0 = Instant::now();
        let config = LeaseConfig::new("a");
        assert!(config.renew_deadline < config.duration && config.renew_every < config.renew_deadline);
        assert!(still_leading(Some(t0), t0 + S(9), config.renew_deadline));
        assert!(!still_leading(Some(t0), t0 + S(10), config.renew_deadline));
        assert!(!still_leading(None, t0, config.renew_deadline));
    }

    /// Catches: a stopping replica releasing by what it believed (its
    /// `leading` flag) rather than what the Lease says once its writes were
    /// answered: a take that landed as it stopped left the Lease held by a
    /// replica that never led, and the next waited out the 15 s; and one
    /// releasing a Lease another holds (that would end a leader's term).
    #[test]
    fn a_stopping_replica_releases_exactly_what_the_lease_says_it_holds() {
        let mine = held_by("a", "7");
        assert!(releases(&mine, "a"), "named by the Lease: released, leading or not");
        assert!(!releases(&held_by("b", "7"), "a"), "another's: left alone");
        let free = Record { holder: None, duration: S(1), version: "8".into() };
        assert!(!releases(&free, "a"), "already released: nothing to write");
    }

    /// Catches: two processes on one host (two test control planes, a
    /// restarted container) sharing an identity: both would "renew" one Lease.
    #[test]
    fn identities_are_unique_per_process_and_name_the_host() {
        let (a, b) = (default_identity(), default_identity());
        assert_ne!(a, b);
        assert!(!a.starts_with('_'), "{a}");
    }
}
