//! Retry budget: retries may add at most `ratio` of the original requests
//! seen over the last `ttl`, plus `min_per_second` × `ttl`, so a total outage
//! can never multiply the load on a struggling service.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A sliding-window retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor: f64,
    slot: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// (requests, retries) per slot, oldest first.
    slots: Vec<(u64, u64)>,
    head: usize,
    head_index: u64,
}

const SLOTS: usize = 10;

impl RetryBudget {
    /// A budget of `ratio` × requests + `min_per_second` over `ttl`.
    pub fn new(ratio: f64, min_per_second: u32, ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        Self {
            ratio: ratio.max(0.0),
            floor: f64::from(min_per_second) * ttl.as_secs_f64(),
            slot: ttl / SLOTS as u32,
            state: Mutex::new(Window { start: Instant::now(), slots: vec![(0, 0); SLOTS], head: 0, head_index: 0 }),
        }
    }

    fn with<R>(&self, now: Instant, f: impl FnOnce(&mut Window) -> R) -> R {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let index = (now.saturating_duration_since(w.start).as_nanos() / self.slot.as_nanos().max(1)) as u64;
        // Advance, clearing slots that fell out of the window.
        let steps = index.saturating_sub(w.head_index).min(SLOTS as u64);
        for _ in 0..steps {
            w.head = (w.head + 1) % SLOTS;
            let h = w.head;
            w.slots[h] = (0, 0);
        }
        w.head_index = w.head_index.max(index);
        f(&mut w)
    }

    /// Records an original request.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    fn deposit_at(&self, now: Instant) {
        self.with(now, |w| {
            let h = w.head;
            w.slots[h].0 += 1;
        });
    }

    /// Takes a retry from the budget, if any is left.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    fn try_withdraw_at(&self, now: Instant) -> bool {
        let (ratio, floor) = (self.ratio, self.floor);
        self.with(now, |w| {
            let (requests, retries) = w.slots.iter().fold((0u64, 0u64), |(a, b), (r, t)| (a + r, b + t));
            if (retries as f64) < requests as f64 * ratio + floor {
                let h = w.head;
                w.slots[h].1 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_retries_at_ratio_plus_floor() {
        let b = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        let t = Instant::now();
        for _ in 0..100 {
            b.deposit_at(t);
        }
        let granted = (0..100).filter(|_| b.try_withdraw_at(t)).count();
        assert_eq!(granted, 20);
        let with_floor = RetryBudget::new(0.0, 2, Duration::from_secs(10));
        assert_eq!((0..100).filter(|_| with_floor.try_withdraw_at(t)).count(), 20, "2/s over 10 s");
    }

    #[test]
    fn old_requests_leave_the_window() {
        let b = RetryBudget::new(1.0, 0, Duration::from_secs(1));
        let t = Instant::now();
        for _ in 0..10 {
            b.deposit_at(t);
        }
        assert!(b.try_withdraw_at(t));
        let later = t + Duration::from_secs(5);
        assert!(!b.try_withdraw_at(later), "deposits expired");
    }
}
