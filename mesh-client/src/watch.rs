//! One reconnecting watch: a server-streaming call to the control plane
//! followed into a latest state.
//!
//! Every long-lived stream a process keeps to the control plane follows the
//! same rules, so they are written once here:
//!
//! - **Static stability**: the state is kept while disconnected. A stream that
//!   fails or ends changes nothing but the [`Connection`] status.
//! - **Backoff with jitter**: reconnects wait [`Backoff`]'s delays (growing
//!   exponentially, each drawn from `[ceiling/2, ceiling]` so that many
//!   clients of a restarted control plane spread out). The backoff starts over
//!   once a stream has delivered a message, not merely opened, so a server
//!   that accepts and fails at once is not hammered.
//! - **A new stream's snapshot replaces what was kept**: the first message a
//!   stream delivers (that the [`Source`] accepts) is a whole state on its
//!   own ([`Source::snapshot`]); later messages are folded into the state
//!   ([`Source::update`]).
//! - **Cancellation**: [`Watch::run`] ends once nobody holds a receiver of
//!   the state, [`Watch::run_until`] when its signal fires, and dropping
//!   either future ends the watch at once (the stream is dropped with it).
//!
//! ```no_run
//! # use mesh_client::watch::{Source, Watch};
//! # fn demo<S: Source<State = u32>>(source: S) {
//! let watch = Watch::new(source, 0);
//! let latest = watch.subscribe();
//! tokio::spawn(watch.run()); // runs while `latest` (or a clone) lives
//! # }
//! ```

use futures_util::{Stream, StreamExt};
use mesh_core::backoff::Backoff;
use std::fmt;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tonic::Status;

#[cfg(test)]
mod tests;

/// Where a watched state comes from: how to open a stream, and how its
/// messages make the state.
pub trait Source: Send + 'static {
    /// One message of the stream.
    type Item: Send;
    /// What is kept and published (cheap to share: usually an `Arc`).
    type State: Send + Sync + 'static;
    /// The stream [`Source::open`] returns (`tonic::Streaming<Item>` for gRPC).
    type Stream: Stream<Item = Result<Self::Item, Status>> + Send + Unpin;

    /// Opens a new stream (called again after every failure or end).
    fn open(&mut self) -> impl Future<Output = Result<Self::Stream, Status>> + Send;

    /// The state a stream's first message stands for on its own: it replaces
    /// whatever was kept. `None` refuses the message (log why): the kept state
    /// stays, and the stream's next message is again taken as its snapshot.
    fn snapshot(&mut self, item: Self::Item) -> Option<Self::State>;

    /// The state after a later message of the same stream; `None` keeps
    /// `state`. By default every message is a whole state, like the first.
    fn update(&mut self, state: &Self::State, item: Self::Item) -> Option<Self::State> {
        let _ = state;
        self.snapshot(item)
    }

    /// Whether `new` is the same as `old`, so receivers need not be woken.
    /// By default every accepted message wakes them.
    fn unchanged(&self, old: &Self::State, new: &Self::State) -> bool {
        let _ = (old, new);
        false
    }

    /// Called when a stream ended (`Ok`), failed or could not be opened
    /// (`Err`), before waiting `retry_in`; the kept state stays in force.
    /// Logs at debug level by default.
    fn disconnected(&mut self, outcome: Result<(), &Status>, retry_in: Duration) {
        match outcome {
            Ok(()) => tracing::debug!(?retry_in, "watch stream ended; reconnecting"),
            Err(e) => tracing::debug!(code = ?e.code(), message = e.message(), ?retry_in, "watch failed; retrying"),
        }
    }
}

/// Whether a watch has a stream delivering, for `/config` and `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// No stream has delivered a message yet.
    Connecting,
    /// The current stream has delivered its first message.
    Connected,
    /// The last stream failed or ended; retrying with backoff, on the kept state.
    Disconnected,
}

/// A [`Source`] followed into a latest state; see the [module docs](self).
pub struct Watch<S: Source> {
    source: S,
    state: watch::Sender<S::State>,
    connection: watch::Sender<Connection>,
    backoff: Backoff,
}

impl<S: Source> fmt::Debug for Watch<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("connection", &*self.connection.borrow())
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// The default reconnect backoff: 100 ms doubling up to 5 s.
pub fn default_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

impl<S: Source> Watch<S> {
    /// A watch of `source` holding `initial` until the first snapshot, with
    /// [`default_backoff`].
    pub fn new(source: S, initial: S::State) -> Self {
        let (state, _) = watch::channel(initial);
        let (connection, _) = watch::channel(Connection::Connecting);
        Self { source, state, connection, backoff: default_backoff() }
    }

    /// Reconnects with `backoff` instead.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// A receiver of the latest state ([`Watch::run`] runs while one lives).
    pub fn subscribe(&self) -> watch::Receiver<S::State> {
        self.state.subscribe()
    }

    /// A receiver of the connection status.
    pub fn connection(&self) -> watch::Receiver<Connection> {
        self.connection.subscribe()
    }

    /// Follows the source until no receiver of the state is left (at once if
    /// none was ever taken).
    pub async fn run(self) {
        self.follow(Until::<std::future::Pending<()>>::Unwatched).await;
    }

    /// Follows the source until `stop` completes, whether or not anyone holds
    /// a receiver (for watches run for their side effects).
    pub async fn run_until(self, stop: impl Future<Output = ()> + Send) {
        self.follow(Until::Signal(stop)).await;
    }

    async fn follow<F: Future<Output = ()>>(self, until: Until<F>) {
        let Self { mut source, state, connection, mut backoff } = self;
        let stop = async {
            match until {
                Until::Unwatched => state.closed().await,
                Until::Signal(f) => f.await,
            }
        };
        let mut stop = std::pin::pin!(stop);
        loop {
            let outcome = tokio::select! {
                o = stream_once(&mut source, &state, &connection, &mut backoff) => o,
                () = &mut stop => return,
            };
            let retry_in = backoff.next_delay();
            connection.send_replace(Connection::Disconnected);
            source.disconnected(outcome.as_ref().map(|_| ()), retry_in);
            tokio::select! {
                () = tokio::time::sleep(retry_in) => {}
                () = &mut stop => return,
            }
        }
    }
}

enum Until<F> {
    /// Until every receiver of the state is dropped.
    Unwatched,
    /// Until the future completes.
    Signal(F),
}

/// Opens one stream and applies its messages until it fails or ends.
async fn stream_once<S: Source>(
    source: &mut S,
    state: &watch::Sender<S::State>,
    connection: &watch::Sender<Connection>,
    backoff: &mut Backoff,
) -> Result<(), Status> {
    let mut stream = source.open().await?;
    let mut delivered = false;
    let mut has_snapshot = false;
    while let Some(item) = stream.next().await {
        let item = item?;
        if !delivered {
            delivered = true;
            backoff.reset();
            connection.send_replace(Connection::Connected);
        }
        let next = if has_snapshot {
            // Only this task writes, so the state cannot change meanwhile.
            let current = state.borrow();
            source.update(&current, item)
        } else {
            source.snapshot(item)
        };
        let Some(next) = next else { continue };
        has_snapshot = true;
        state.send_if_modified(|cur| {
            let changed = !source.unchanged(cur, &next);
            if changed {
                *cur = next;
            }
            changed
        });
    }
    Ok(())
}
