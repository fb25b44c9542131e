//! Waiting without an async runtime of our own: futures woken by the
//! reaper threads (and a timer thread for deadlines), and [`block_on`] for
//! synchronous callers.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Instant;

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the calling thread, parking it while the
/// future waits. Any of this crate's futures work; so does any future that
/// needs no runtime's reactor or timers.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[derive(Default)]
struct TimerState {
    waker: Option<Waker>,
    cancelled: bool,
}

/// Wakes the latest waker given to it at a deadline, from a thread of its
/// own (started on first use, ended early when the timer is dropped).
pub(crate) struct Timer {
    deadline: Instant,
    shared: Option<Arc<(Mutex<TimerState>, Condvar)>>,
}

impl Timer {
    pub(crate) fn new(deadline: Instant) -> Self {
        Self { deadline, shared: None }
    }

    /// Whether the deadline has passed; if not, `cx` is woken when it does.
    pub(crate) fn poll_expired(&mut self, cx: &Context<'_>) -> bool {
        if Instant::now() >= self.deadline {
            return true;
        }
        let shared = self.shared.get_or_insert_with(|| {
            let shared = Arc::new((Mutex::new(TimerState::default()), Condvar::new()));
            let (theirs, deadline) = (shared.clone(), self.deadline);
            let spawned =
                std::thread::Builder::new().name("mesh-process-timer".into()).stack_size(64 * 1024).spawn(move || {
                    let (lock, cond) = &*theirs;
                    let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    while !state.cancelled {
                        let now = Instant::now();
                        if now >= deadline {
                            if let Some(w) = state.waker.take() {
                                w.wake();
                            }
                            return;
                        }
                        state = cond.wait_timeout(state, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
                    }
                });
            if spawned.is_err() {
                // No thread: fall back to being polled again soon.
                cx.waker().wake_by_ref();
            }
            shared
        });
        shared.0.lock().unwrap_or_else(PoisonError::into_inner).waker = Some(cx.waker().clone());
        false
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.0.lock().unwrap_or_else(PoisonError::into_inner).cancelled = true;
            shared.1.notify_all();
        }
    }
}
