//! Many children: which one exited when it should not have, and stopping
//! some or all of them together.

use crate::child::{Child, Exited, stop_all, waiter_id};
use crate::wait::block_on;
use crate::{DEFAULT_STOP_GRACE, Error, Spec};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Debug)]
struct Slot {
    child: Child,
    /// Retired or being shut down: its exit is not a crash.
    expected: bool,
    /// Its exit has been reported once.
    reported: bool,
}

/// Children started together. An exit nobody asked for is reported once,
/// naming the child ([`Supervisor::next_exit`], [`Supervisor::check`]);
/// dropping the supervisor stops every child (SIGTERM, then SIGKILL after
/// the longest of their stop graces).
#[derive(Debug, Default)]
pub struct Supervisor {
    slots: Vec<Slot>,
}

impl Supervisor {
    /// No children yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a child; returns its index.
    pub fn spawn(&mut self, spec: Spec) -> Result<usize, Error> {
        let child = Child::spawn(spec)?;
        self.slots.push(Slot { child, expected: false, reported: false });
        Ok(self.slots.len() - 1)
    }

    /// Child `index`.
    pub fn child(&self, index: usize) -> Option<&Child> {
        self.slots.get(index).map(|s| &s.child)
    }

    /// How many children were started (running or not).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no child was started.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many children are running.
    pub fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.child.is_running()).count()
    }

    /// `Err` with the first child that exited unexpectedly and was not
    /// reported yet (never blocks).
    pub fn check(&mut self) -> Result<(), Exited> {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.expected || slot.reported {
                continue;
            }
            if let Some(status) = slot.child.status() {
                slot.reported = true;
                return Err(Exited::new(&slot.child, status, Some(index)));
            }
        }
        Ok(())
    }

    /// Resolves when a child exits unexpectedly (one not retired or being
    /// shut down), once per child. Works on any async runtime; dropping the
    /// future (a `select!` branch that lost) loses nothing.
    pub fn next_exit(&mut self) -> impl Future<Output = Exited> + '_ {
        NextExit { sup: self, id: waiter_id() }
    }

    /// Stops some children (see [`Supervisor::shutdown`]); their exits are
    /// expected, not reported. Returns the names of those that needed SIGKILL.
    pub async fn retire(&mut self, indexes: &[usize], grace: Duration) -> Vec<String> {
        for &i in indexes {
            if let Some(slot) = self.slots.get_mut(i) {
                slot.expected = true;
            }
        }
        let children: Vec<&Child> = indexes.iter().filter_map(|&i| self.child(i)).collect();
        let killed = stop_all(&children, grace).await;
        killed.into_iter().map(|i| children[i].name().to_string()).collect()
    }

    /// Stops every child together: SIGTERM, up to `grace` for all to exit,
    /// then SIGKILL, and reaps them all. Returns the names of those that
    /// needed SIGKILL.
    pub async fn shutdown(&mut self, grace: Duration) -> Vec<String> {
        let all: Vec<usize> = (0..self.slots.len()).collect();
        self.retire(&all, grace).await
    }

    /// [`Supervisor::shutdown`], blocking the calling thread.
    pub fn shutdown_blocking(&mut self, grace: Duration) -> Vec<String> {
        block_on(self.shutdown(grace))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.running() > 0 {
            let grace = self.slots.iter().map(|s| s.child.spec().stop_grace).max().unwrap_or(DEFAULT_STOP_GRACE);
            self.shutdown_blocking(grace);
        }
    }
}

struct NextExit<'a> {
    sup: &'a mut Supervisor,
    id: u64,
}

impl Future for NextExit<'_> {
    type Output = Exited;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Exited> {
        let this = self.get_mut();
        for (index, slot) in this.sup.slots.iter_mut().enumerate() {
            if slot.expected || slot.reported {
                continue;
            }
            if let Some(status) = slot.child.poll_exit(this.id, cx.waker()) {
                slot.reported = true;
                return Poll::Ready(Exited::new(&slot.child, status, Some(index)));
            }
        }
        Poll::Pending
    }
}

impl Drop for NextExit<'_> {
    fn drop(&mut self) {
        for slot in &self.sup.slots {
            slot.child.unregister(self.id);
        }
    }
}
