//! A local token bucket: `rate` requests per second with bursts of `burst`.

use std::sync::Mutex;
use std::time::Instant;

/// A token bucket shared by every request through one route of one proxy.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// The configured rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes a token if one is available.
    pub fn try_take(&self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Callers read the clock before taking the lock, so a thread that was
        // preempted in between arrives with an older `now`: it must neither
        // refill nor move the refill mark back (which would credit the same
        // interval twice and let more than `rate` through under load).
        if now > s.1 {
            let elapsed = now.duration_since(s.1).as_secs_f64();
            s.0 = (s.0 + elapsed * self.rate).min(self.burst);
            s.1 = now;
        }
        // Tolerate float drift in the refill sum.
        if s.0 >= 1.0 - 1e-9 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_the_rate_after_the_burst() {
        let b = TokenBucket::new(10.0, 5);
        let t = Instant::now();
        assert_eq!((0..20).filter(|_| b.try_take_at(t)).count(), 5, "burst");
        let t2 = t + Duration::from_secs(2);
        assert_eq!((0..100).filter(|_| b.try_take_at(t2)).count(), 5, "refill is capped at the burst");
        let mut granted = 0;
        for i in 1..=100 {
            if b.try_take_at(t2 + Duration::from_millis(10 * i)) {
                granted += 1;
            }
        }
        assert_eq!(granted, 10, "10/s over one second");
    }

    #[test]
    fn a_late_caller_with_an_older_clock_reading_mints_nothing() {
        let b = TokenBucket::new(10.0, 1);
        let t = Instant::now();
        assert!(b.try_take_at(t));
        assert!(b.try_take_at(t + Duration::from_secs(1)), "refilled");
        assert!(!b.try_take_at(t + Duration::from_millis(500)), "an older reading finds the bucket empty");
        // 50 ms after the last refill: half a token, not the 5.5 a mark moved
        // back to t + 500 ms would credit.
        assert!(!b.try_take_at(t + Duration::from_millis(1050)));
        assert!(b.try_take_at(t + Duration::from_millis(1100)));
    }
}
