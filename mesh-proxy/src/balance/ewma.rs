//! Peak-EWMA load: an endpoint's cost is the exponentially weighted moving
//! average of its latency, except that a slower observation replaces the
//! average at once (the "peak"), so a degrading endpoint is shunned quickly and
//! earns traffic back slowly. Load is cost × (requests in flight + 1).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Tunables for [`PeakEwma`].
#[derive(Debug, Clone, Copy)]
pub struct EwmaConfig {
    /// Cost of an endpoint nothing has been observed about yet.
    pub default_rtt: Duration,
    /// Time constant of the decay: after `decay`, an old cost weighs ~37 %.
    pub decay: Duration,
    /// Cost assigned on a failure (refused connection, timeout).
    pub failure_penalty: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            // Optimistic: a new endpoint is tried soon, and its first
            // response sets its real cost.
            default_rtt: Duration::from_millis(1),
            // Short: a slow sample fades within seconds, so one hiccup does not
            // starve a healthy replica for long (the peak still reacts at once).
            decay: Duration::from_secs(5),
            failure_penalty: Duration::from_secs(1),
        }
    }
}

/// An endpoint's load estimate; shared by every request to it.
#[derive(Debug)]
pub struct PeakEwma {
    config: EwmaConfig,
    state: Mutex<Estimate>,
    pending: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    cost_ns: f64,
    stamp: Instant,
    /// Whether any latency has been observed; the first observation replaces
    /// the default outright.
    observed: bool,
    /// Whether the cost is a failure's penalty rather than a latency: the
    /// next answer replaces it outright.
    penalized: bool,
}

impl PeakEwma {
    /// A fresh estimate at the default cost.
    pub fn new(config: EwmaConfig) -> Self {
        let cost_ns = config.default_rtt.as_nanos() as f64;
        Self {
            config,
            state: Mutex::new(Estimate { cost_ns, stamp: Instant::now(), observed: false, penalized: false }),
            pending: AtomicUsize::new(0),
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut Estimate) -> R) -> R {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// The current load: decayed cost × (pending + 1).
    pub fn load(&self, now: Instant) -> f64 {
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        let cost = self.with_state(|s| decayed(s, now, self.config.decay));
        cost * (pending + 1.0)
    }

    /// Requests currently in flight.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Marks a request in flight until the returned guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Feeds an observed latency into the estimate.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        self.record(rtt, now, false);
    }

    /// Records a failure as a very slow observation, until the endpoint
    /// answers again: an answer is what the penalty was guessing at, so it
    /// replaces the penalty outright. (Left to decay, a 1 s penalty keeps
    /// an endpoint that refused connections for a moment out of a
    /// sub-millisecond pool for tens of seconds, long after it recovered
    /// and its ejection ended.)
    pub fn penalize(&self, now: Instant) {
        self.record(self.config.failure_penalty, now, true);
    }

    fn record(&self, rtt: Duration, now: Instant, penalty: bool) {
        let rtt = rtt.as_nanos() as f64;
        let decay = self.config.decay;
        self.with_state(|s| {
            let cost = decayed(s, now, decay);
            // A slower observation wins outright; a faster one is averaged in
            // (one that answers a penalty replaces it).
            s.cost_ns = if rtt > cost || !s.observed || (s.penalized && !penalty) {
                rtt
            } else {
                let elapsed = now.saturating_duration_since(s.stamp).as_nanos() as f64;
                let w = (-elapsed / decay.as_nanos().max(1) as f64).exp();
                cost * w + rtt * (1.0 - w)
            };
            s.stamp = now;
            s.observed = true;
            s.penalized = penalty;
        });
    }

    /// The current cost (latency estimate) without the pending factor.
    pub fn cost(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.with_state(|s| decayed(s, now, self.config.decay)) as u64)
    }
}

/// Cost decays toward zero while nothing is observed, so an endpoint that was
/// penalized is eventually tried again.
fn decayed(s: &Estimate, now: Instant, decay: Duration) -> f64 {
    let elapsed = now.saturating_duration_since(s.stamp).as_nanos() as f64;
    s.cost_ns * (-elapsed / decay.as_nanos().max(1) as f64).exp()
}

/// A request in flight on an endpoint; dropping it ends the pending count.
#[derive(Debug)]
pub struct InFlight<'a>(&'a PeakEwma);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_observations_win_at_once_fast_ones_slowly() {
        let e = PeakEwma::new(EwmaConfig::default());
        let t0 = Instant::now();
        e.observe(Duration::from_micros(10), t0);
        assert_eq!(e.cost(t0), Duration::from_micros(10), "the first sample replaces the default");
        e.observe(Duration::from_millis(100), t0);
        assert_eq!(e.cost(t0), Duration::from_millis(100));
        let t1 = t0 + Duration::from_millis(100);
        e.observe(Duration::from_millis(1), t1);
        let c = e.cost(t1);
        assert!(c > Duration::from_millis(90), "one fast sample barely moves it: {c:?}");
        let t2 = t1 + Duration::from_secs(20);
        e.observe(Duration::from_millis(1), t2);
        assert!(e.cost(t2) < Duration::from_millis(2));
    }

    #[test]
    fn pending_requests_multiply_load() {
        let e = PeakEwma::new(EwmaConfig::default());
        let now = Instant::now();
        let base = e.load(now);
        let a = e.start();
        let b = e.start();
        assert!((e.load(now) / base - 3.0).abs() < 0.01);
        drop((a, b));
        assert_eq!(e.pending(), 0);
    }

    #[test]
    fn penalty_decays_back() {
        let e = PeakEwma::new(EwmaConfig::default());
        let t0 = Instant::now();
        e.penalize(t0);
        assert!(e.cost(t0) >= Duration::from_millis(999));
        assert!(e.cost(t0 + Duration::from_secs(30)) < Duration::from_millis(10));
    }

    #[test]
    fn an_answer_replaces_a_penalty() {
        let e = PeakEwma::new(EwmaConfig::default());
        let t0 = Instant::now();
        e.observe(Duration::from_micros(200), t0);
        e.penalize(t0);
        let t1 = t0 + Duration::from_millis(100);
        e.observe(Duration::from_micros(300), t1);
        assert_eq!(e.cost(t1), Duration::from_micros(300), "the penalty outlived an answer");
        // A real slow answer is still a peak that fades slowly.
        e.observe(Duration::from_millis(50), t1);
        e.observe(Duration::from_micros(300), t1 + Duration::from_millis(10));
        assert!(e.cost(t1 + Duration::from_millis(10)) > Duration::from_millis(40));
    }
}
