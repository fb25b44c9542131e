//! Whether one connection may take new requests: its age (and, for mTLS,
//! the peer certificate's expiry), the credentials it was secured under,
//! and whether it was retired (GOAWAY, a request that came back unprocessed).

use super::ClientSettings;
use crate::tls::ClientIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Whether one connection may take new requests.
#[derive(Debug)]
pub(super) struct ConnState {
    opened: Instant,
    /// No new requests from this instant on (maximum age, peer certificate).
    retire_at: Instant,
    /// The credentials generation an mTLS connection was secured under.
    generation: Option<u64>,
    /// Set when the peer said it is closing (GOAWAY) or a request on the
    /// connection came back unprocessed.
    closing: AtomicBool,
    /// When a request last went on it (milliseconds since `opened`).
    last_used_ms: AtomicU64,
}

impl ConnState {
    pub(super) fn new(settings: &ClientSettings, io: &ClientIo, generation: Option<u64>) -> Arc<Self> {
        let opened = Instant::now();
        let mut age = settings.max_connection_age;
        if let Some(expiry) = io.peer_not_after() {
            age = age.min(expiry.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
        }
        // Bounded so the addition cannot overflow.
        let retire_at = opened + age.min(Duration::from_secs(100 * 365 * 86_400));
        Arc::new(Self {
            opened,
            retire_at,
            generation,
            closing: AtomicBool::new(false),
            last_used_ms: AtomicU64::new(0),
        })
    }

    /// Whether new requests may use it, with credentials of `generation` in force.
    pub(super) fn reusable(&self, generation: Option<u64>) -> bool {
        !self.closing.load(Ordering::Relaxed)
            && Instant::now() < self.retire_at
            && (self.generation.is_none() || self.generation == generation)
    }

    pub(super) fn retire(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    pub(super) fn used(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether a request went on it within `within`.
    pub(super) fn recently_used(&self, within: Duration) -> bool {
        let last = self.opened + Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        last.elapsed() <= within
    }
}

#[cfg(test)]
impl ConnState {
    /// A connection opened now that retires in `age`, secured under `generation`.
    pub(super) fn for_tests(age: Duration, generation: Option<u64>) -> Self {
        Self {
            opened: Instant::now(),
            retire_at: Instant::now() + age,
            generation,
            closing: AtomicBool::new(false),
            last_used_ms: AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Age and credentials generation decide reuse. Catches connections
    /// reused past their age or across a change of certificate or bundle.
    #[test]
    fn connections_retire_with_age_and_credentials() {
        let state = ConnState::for_tests;
        assert!(state(Duration::from_secs(60), Some(3)).reusable(Some(3)));
        assert!(!state(Duration::from_secs(60), Some(3)).reusable(Some(4)), "new credentials");
        assert!(state(Duration::from_secs(60), None).reusable(Some(4)), "plaintext: credentials do not matter");
        assert!(!state(Duration::ZERO, None).reusable(None), "too old");
        let s = state(Duration::from_secs(60), None);
        s.retire();
        assert!(!s.reusable(None), "retired");
    }
}
