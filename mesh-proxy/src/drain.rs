//! Tracking live connections so shutdown can wait for them to finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Counts live connections; [`Drain::idle`] completes when none are left.
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    live: AtomicUsize,
    notify: Notify,
}

/// One live connection; dropping it counts the connection as finished.
#[derive(Debug)]
pub struct Guard(Arc<Inner>);

impl Drain {
    /// Registers a live connection.
    pub fn guard(&self) -> Guard {
        self.0.live.fetch_add(1, Ordering::AcqRel);
        Guard(self.0.clone())
    }

    /// Live connections now.
    pub fn live(&self) -> usize {
        self.0.live.load(Ordering::Acquire)
    }

    /// Completes once no connection is live.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn idle_waits_for_the_last_guard() {
        let d = Drain::default();
        let a = d.guard();
        let b = d.guard();
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.idle().await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("idle").expect("join");
    }
}
