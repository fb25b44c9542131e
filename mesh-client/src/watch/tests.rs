//! The watch helper against a scripted fake source, on paused time.
//!
//! Each test names the broken helper it catches.

use super::*;
use futures_util::stream::BoxStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// A message: a list of numbers. As a snapshot it is the whole state; as an
/// update it is appended. A message containing 0 is refused.
type Msg = Vec<u32>;
type Feed = mpsc::UnboundedSender<Result<Msg, Status>>;
type Answer = Result<mpsc::UnboundedReceiver<Result<Msg, Status>>, Status>;

/// A source whose `open` answers come from the test, in order.
struct Fake {
    answers: mpsc::UnboundedReceiver<Answer>,
    attempts: mpsc::UnboundedSender<Instant>,
}

impl Source for Fake {
    type Item = Msg;
    type State = Vec<u32>;
    type Stream = BoxStream<'static, Result<Msg, Status>>;

    async fn open(&mut self) -> Result<Self::Stream, Status> {
        let _ = self.attempts.send(Instant::now());
        match self.answers.recv().await {
            Some(Ok(rx)) => {
                let s = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
                Ok(s.boxed())
            }
            Some(Err(e)) => Err(e),
            // The script ran out: the control plane never answers.
            None => std::future::pending().await,
        }
    }

    fn snapshot(&mut self, item: Msg) -> Option<Vec<u32>> {
        (!item.contains(&0)).then_some(item)
    }

    fn update(&mut self, state: &Vec<u32>, item: Msg) -> Option<Vec<u32>> {
        (!item.contains(&0)).then(|| state.iter().chain(&item).copied().collect())
    }

    fn unchanged(&self, old: &Vec<u32>, new: &Vec<u32>) -> bool {
        old == new
    }
}

/// The test's side of a [`Fake`].
struct Script {
    answers: mpsc::UnboundedSender<Answer>,
    attempts: mpsc::UnboundedReceiver<Instant>,
}

fn fake() -> (Fake, Script) {
    let (answers_tx, answers) = mpsc::unbounded_channel();
    let (attempts, attempts_rx) = mpsc::unbounded_channel();
    (Fake { answers, attempts }, Script { answers: answers_tx, attempts: attempts_rx })
}

impl Script {
    /// The next `open` fails.
    fn fail(&self) {
        self.answers.send(Err(Status::unavailable("control plane down"))).expect("watch alive");
    }

    /// The next `open` succeeds with a stream the returned feed drives.
    fn stream(&self) -> Feed {
        let (tx, rx) = mpsc::unbounded_channel();
        self.answers.send(Ok(rx)).expect("watch alive");
        tx
    }

    /// When the next `open` was called.
    async fn attempt(&mut self) -> Instant {
        tokio::time::timeout(Duration::from_secs(600), self.attempts.recv())
            .await
            .expect("an attempt within 600 s")
            .expect("watch alive")
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asserts `gap` is a jittered delay for `ceiling`: in `[ceiling/2, ceiling]`
/// (plus the timer's 1 ms granularity).
fn assert_jittered(gap: Duration, ceiling: Duration, what: &str) {
    assert!(
        gap >= ceiling / 2 && gap <= ceiling + ms(1),
        "{what}: waited {gap:?}, expected [{:?}, {ceiling:?}]",
        ceiling / 2
    );
}

async fn wait_state(rx: &mut watch::Receiver<Vec<u32>>, want: &[u32]) {
    let seen = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|s| s == want)).await.is_ok();
    assert!(seen, "state never became {want:?}; it is {:?}", *rx.borrow());
}

/// Catches: no backoff (a hot reconnect loop: gaps of 0), a backoff that
/// does not grow, or one that ignores its maximum.
#[tokio::test(start_paused = true)]
async fn reconnects_after_errors_with_growing_capped_backoff() {
    let (source, mut script) = fake();
    let watch = Watch::new(source, vec![]).with_backoff(Backoff::new(ms(100), ms(1000)));
    let _rx = watch.subscribe();
    let task = tokio::spawn(watch.run());
    for _ in 0..7 {
        script.fail();
    }
    let mut last = script.attempt().await;
    for ceiling in [100, 200, 400, 800, 1000, 1000] {
        let next = script.attempt().await;
        assert_jittered(next - last, ms(ceiling), "retry");
        last = next;
    }
    task.abort();
}

/// Catches: no jitter (every client of a restarted control plane
/// reconnecting in lockstep) and jitter outside `[ceiling/2, ceiling]`.
#[tokio::test(start_paused = true)]
async fn reconnect_delays_are_jittered_within_bounds() {
    let mut gaps = Vec::new();
    for _ in 0..16 {
        let (source, mut script) = fake();
        let watch = Watch::new(source, vec![]).with_backoff(Backoff::new(ms(100), ms(100)));
        let _rx = watch.subscribe();
        let task = tokio::spawn(watch.run());
        script.fail();
        script.fail();
        let first = script.attempt().await;
        let gap = script.attempt().await - first;
        assert_jittered(gap, ms(100), "retry");
        gaps.push(gap);
        task.abort();
    }
    gaps.sort();
    gaps.dedup();
    assert!(gaps.len() > 1, "16 watches all waited exactly {gaps:?}: no jitter");
}

/// Catches: resetting the backoff when a stream merely opens (a control
/// plane that accepts and fails at once is then hammered), and never
/// resetting it (a healthy reconnect after a long outage waits the maximum).
#[tokio::test(start_paused = true)]
async fn backoff_starts_over_only_after_a_stream_delivers() {
    let (source, mut script) = fake();
    let watch = Watch::new(source, vec![]).with_backoff(Backoff::new(ms(100), ms(10_000)));
    let _rx = watch.subscribe();
    let task = tokio::spawn(watch.run());
    script.fail();
    script.fail();
    drop(script.stream()); // opens, then ends without a message
    let delivers = script.stream();
    delivers.send(Ok(vec![1])).expect("feed");
    delivers.send(Err(Status::unavailable("reset"))).expect("feed");
    script.fail();

    let mut last = script.attempt().await;
    for (ceiling, what) in [(100, "after a failure"), (200, "after a failure"), (400, "after an empty stream")] {
        let next = script.attempt().await;
        assert_jittered(next - last, ms(ceiling), what);
        last = next;
    }
    let next = script.attempt().await;
    assert_jittered(next - last, ms(100), "after a stream that delivered");
    task.abort();
}

/// Catches: a helper that folds a new stream's first message into the kept
/// state instead of replacing it (endpoints removed during an outage would
/// stay forever).
#[tokio::test(start_paused = true)]
async fn a_new_streams_snapshot_replaces_the_kept_state() {
    let (source, script) = fake();
    let watch = Watch::new(source, vec![]);
    let mut rx = watch.subscribe();
    let task = tokio::spawn(watch.run());
    let first = script.stream();
    first.send(Ok(vec![1, 2])).expect("feed");
    first.send(Ok(vec![3])).expect("feed");
    wait_state(&mut rx, &[1, 2, 3]).await;
    first.send(Err(Status::unavailable("control plane restarted"))).expect("feed");
    let second = script.stream();
    second.send(Ok(vec![4])).expect("feed");
    wait_state(&mut rx, &[4]).await;
    second.send(Ok(vec![5])).expect("feed");
    wait_state(&mut rx, &[4, 5]).await;
    task.abort();
}

/// Catches: a helper that resets the state (to the initial value or empty)
/// when the stream breaks, and one that reports itself connected when a
/// stream merely opens or stays "connected" after it broke.
#[tokio::test(start_paused = true)]
async fn the_state_is_kept_while_disconnected() {
    let (source, mut script) = fake();
    let watch = Watch::new(source, vec![9]);
    let mut rx = watch.subscribe();
    let connection = watch.connection();
    let task = tokio::spawn(watch.run());
    let feed = script.stream();
    script.attempt().await;
    tokio::time::sleep(ms(10)).await;
    assert_eq!(*connection.borrow(), Connection::Connecting, "open but silent is not connected yet");
    assert_eq!(*rx.borrow(), [9], "the initial state until a snapshot");
    feed.send(Ok(vec![1, 2])).expect("feed");
    wait_state(&mut rx, &[1, 2]).await;
    assert_eq!(*connection.borrow(), Connection::Connected);

    drop(feed);
    for _ in 0..10 {
        script.fail();
    }
    for _ in 0..10 {
        script.attempt().await;
        assert_eq!(*rx.borrow(), [1, 2], "kept while the control plane is away");
        assert_eq!(*connection.borrow(), Connection::Disconnected);
    }
    assert!(!rx.has_changed().expect("watch alive"), "receivers were not even woken");
    task.abort();
}

/// Catches: counting a refused first message as the stream's snapshot (the
/// next message would then be folded into the stale kept state).
#[tokio::test(start_paused = true)]
async fn a_refused_first_message_leaves_the_snapshot_to_the_next() {
    let (source, script) = fake();
    let watch = Watch::new(source, vec![]);
    let mut rx = watch.subscribe();
    let task = tokio::spawn(watch.run());
    let first = script.stream();
    first.send(Ok(vec![1, 2])).expect("feed");
    wait_state(&mut rx, &[1, 2]).await;
    drop(first);
    let second = script.stream();
    second.send(Ok(vec![0])).expect("feed");
    second.send(Ok(vec![5])).expect("feed");
    wait_state(&mut rx, &[5]).await;
    task.abort();
}

/// Catches: waking every receiver for a reconnect's snapshot that changes
/// nothing (every balancer would rebuild after each control-plane restart).
#[tokio::test(start_paused = true)]
async fn an_unchanged_snapshot_does_not_wake_receivers() {
    let (source, script) = fake();
    let watch = Watch::new(source, vec![]);
    let mut rx = watch.subscribe();
    let mut connection = watch.connection();
    let task = tokio::spawn(watch.run());
    let first = script.stream();
    first.send(Ok(vec![1])).expect("feed");
    wait_state(&mut rx, &[1]).await;
    drop(first);
    connection.wait_for(|c| *c == Connection::Disconnected).await.expect("watch alive");
    let second = script.stream();
    second.send(Ok(vec![1])).expect("feed");
    // The snapshot is applied as the stream is marked connected.
    connection.wait_for(|c| *c == Connection::Connected).await.expect("watch alive");
    assert!(!rx.has_changed().expect("watch alive"), "woken for the same state");
    second.send(Ok(vec![2])).expect("feed");
    wait_state(&mut rx, &[1, 2]).await;
    task.abort();
}

/// Catches: a helper that notices its receivers are gone only between
/// streams (it would keep a stream to the control plane open forever) or
/// only between attempts (it sleeps out its backoff first).
#[tokio::test(start_paused = true)]
async fn run_ends_when_nobody_watches() {
    // While streaming.
    let (source, script) = fake();
    let watch = Watch::new(source, vec![]);
    let rx = watch.subscribe();
    let also = rx.clone();
    let task = tokio::spawn(watch.run());
    let feed = script.stream();
    feed.send(Ok(vec![1])).expect("feed");
    tokio::time::sleep(ms(10)).await;
    drop(rx);
    tokio::time::sleep(ms(10)).await;
    assert!(!task.is_finished(), "a clone still watches");
    drop(also);
    tokio::time::timeout(ms(100), task).await.expect("ends at once").expect("no panic");
    assert!(feed.is_closed(), "the stream was dropped");

    // While backing off.
    let (source, script) = fake();
    let watch = Watch::new(source, vec![]).with_backoff(Backoff::new(Duration::from_secs(60), Duration::from_secs(60)));
    let rx = watch.subscribe();
    let task = tokio::spawn(watch.run());
    script.fail();
    tokio::time::sleep(ms(10)).await;
    let t0 = Instant::now();
    drop(rx);
    tokio::time::timeout(ms(100), task).await.expect("ends at once").expect("no panic");
    assert!(t0.elapsed() < Duration::from_secs(1), "did not sleep out its backoff");
}

/// Catches: `run_until` stopping because nobody holds a receiver (the
/// registration and the trust bundle are run for their side effects), or
/// not stopping on its signal while a stream is open.
#[tokio::test(start_paused = true)]
async fn run_until_follows_until_its_signal() {
    let (source, mut script) = fake();
    let watch = Watch::new(source, vec![]);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(watch.run_until(async move {
        let _ = stop_rx.await;
    }));
    script.fail();
    let feed = script.stream();
    feed.send(Ok(vec![7])).expect("feed");
    script.attempt().await;
    script.attempt().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!task.is_finished() && !feed.is_closed(), "keeps its stream without receivers");
    stop_tx.send(()).expect("task alive");
    tokio::time::timeout(ms(100), task).await.expect("ends at once").expect("no panic");
    assert!(feed.is_closed(), "the stream was dropped");
}
