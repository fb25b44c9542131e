//! A cloneable shutdown signal: one side triggers, every holder can wait.
//!
//! Servers select on [`Shutdown::triggered`] to stop accepting, then drain.

use tokio::sync::watch;

/// Triggers shutdown for every [`Shutdown`] cloned from it.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<bool>);

/// Waits for shutdown; cheap to clone into every task that must stop.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Creates a linked trigger and signal.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Starts shutdown; idempotent.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// A new signal linked to this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Completes once shutdown has been triggered (or the trigger dropped).
    pub async fn triggered(&mut self) {
        // An error means the trigger is gone: treat that as shutdown too.
        let _ = self.0.wait_for(|v| *v).await;
    }

    /// Whether shutdown has already been triggered.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C) and names which one arrived.
pub async fn os_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let (t, s) = channel();
        let mut a = s.clone();
        let mut b = t.subscribe();
        assert!(!s.is_triggered());
        t.trigger();
        a.triggered().await;
        b.triggered().await;
        assert!(s.is_triggered());
    }

    #[tokio::test]
    async fn dropped_trigger_counts_as_shutdown() {
        let (t, mut s) = channel();
        drop(t);
        s.triggered().await;
    }
}
