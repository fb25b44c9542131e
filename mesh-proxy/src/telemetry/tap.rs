//! Tap: a live stream of requests for `meshctl tap` and `meshctl top`. When
//! nobody taps, the cost is one atomic load per request.

use mesh_proto::wire::TapEvent;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Which requests a tap wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// Method.
    pub method: Option<String>,
    /// Authority (substring).
    pub authority: Option<String>,
    /// Direction.
    pub direction: Option<String>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn accepts(&self, e: &TapEvent) -> bool {
        self.path_prefix.as_deref().is_none_or(|p| e.path.starts_with(p))
            && self.method.as_deref().is_none_or(|m| e.method.eq_ignore_ascii_case(m))
            && self.authority.as_deref().is_none_or(|a| e.authority.contains(a))
            && self.direction.as_deref().is_none_or(|d| e.direction == d)
    }
}

/// The hub taps subscribe to.
#[derive(Debug, Clone, Default)]
pub struct Tap {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    active: AtomicUsize,
    subscribers: Mutex<Vec<(Filter, mpsc::Sender<TapEvent>)>>,
}

/// At most this many taps at once: tap is for people, not pipelines.
pub const MAX_TAPS: usize = 16;

impl Tap {
    /// Whether anyone is tapping (check before building an event).
    pub fn is_active(&self) -> bool {
        self.inner.active.load(Ordering::Relaxed) > 0
    }

    /// Subscribes; `None` when too many taps are open.
    pub fn subscribe(&self, filter: Filter) -> Option<mpsc::Receiver<TapEvent>> {
        let mut subs = self.inner.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|(_, tx)| !tx.is_closed());
        if subs.len() >= MAX_TAPS {
            return None;
        }
        let (tx, rx) = mpsc::channel(1024);
        subs.push((filter, tx));
        self.inner.active.store(subs.len(), Ordering::Relaxed);
        Some(rx)
    }

    /// Delivers `e` to matching taps; a slow tap misses events rather than
    /// slowing traffic down.
    pub fn publish(&self, e: &TapEvent) {
        let mut subs = self.inner.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|(f, tx)| {
            if f.accepts(e) {
                match tx.try_send(e.clone()) {
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                    _ => return true,
                }
            }
            !tx.is_closed()
        });
        self.inner.active.store(subs.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str) -> TapEvent {
        TapEvent {
            ts_ms: 0,
            direction: "inbound".into(),
            workload: "w".into(),
            target: "t".into(),
            peer_id: String::new(),
            method: "GET".into(),
            authority: "books".into(),
            path: path.into(),
            status: 200,
            grpc_status: None,
            latency_ms: 1.0,
            tls: true,
        }
    }

    #[tokio::test]
    async fn filters_and_unsubscribes() {
        let tap = Tap::default();
        assert!(!tap.is_active());
        let mut rx = tap.subscribe(Filter { path_prefix: Some("/api".into()), ..Default::default() }).expect("room");
        assert!(tap.is_active());
        tap.publish(&event("/other"));
        tap.publish(&event("/api/books"));
        assert_eq!(rx.recv().await.expect("event").path, "/api/books");
        drop(rx);
        tap.publish(&event("/api/x"));
        assert!(!tap.is_active(), "closed taps are forgotten");
    }
}
