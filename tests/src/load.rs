//! A closed-loop load driver: N workers sending requests back to back over
//! keep-alive connections, recording every outcome.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// 2xx responses.
    pub ok: u64,
    /// Anything else (status or transport error).
    pub failed: u64,
    /// Successful responses by `x-replica`.
    pub by_replica: HashMap<String, u64>,
    /// The first few failures, for the assertion message.
    pub errors: Vec<String>,
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    outcome: Arc<Mutex<Outcome>>,
    workers: JoinSet<()>,
    started: Instant,
}

impl Load {
    /// Starts `concurrency` workers GETting `url` (HTTP/1.1 keep-alive, or
    /// HTTP/2 prior knowledge when `h2`).
    pub fn start(url: &str, concurrency: usize, h2: bool) -> Self {
        Self::start_paced(url, concurrency, h2, Duration::ZERO)
    }

    /// [`Load::start`], each worker pausing `pause` after each request (to
    /// bound the load on small machines).
    pub fn start_paced(url: &str, concurrency: usize, h2: bool, pause: Duration) -> Self {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        // Every failed attempt counts: hyper-util would otherwise quietly resend
        // requests a closing connection handed back.
        let client = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .retry_canceled_requests(false)
            .build_http::<Empty<Bytes>>();
        let uri: http::Uri = url.parse().unwrap();
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            let (stop, outcome, client, uri) = (stop.clone(), outcome.clone(), client.clone(), uri.clone());
            workers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let res = tokio::time::timeout(Duration::from_secs(10), async {
                        let rsp = client.get(uri.clone()).await?;
                        let status = rsp.status();
                        let replica = rsp.headers().get("x-replica").and_then(|v| v.to_str().ok()).map(str::to_string);
                        let body = rsp.into_body().collect().await?.to_bytes();
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, replica, body))
                    })
                    .await;
                    record(&outcome, res);
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            });
        }
        Self { stop, outcome, workers, started }
    }

    /// The outcome so far.
    pub fn snapshot(&self) -> Outcome {
        self.outcome.lock().unwrap().clone()
    }

    /// Runs until at least `n` requests completed and `at_least` passed since
    /// the start, then stops; returns the outcome and how long the load ran
    /// (start to stop). A count, not a duration, so a loaded machine (fewer
    /// requests per second) gets as many; panics after `deadline`.
    pub async fn stop_after(self, n: u64, at_least: Duration, deadline: Duration) -> (Outcome, Duration) {
        loop {
            let s = self.snapshot();
            let elapsed = self.started.elapsed();
            if s.ok + s.failed >= n && elapsed >= at_least {
                break;
            }
            assert!(elapsed < deadline, "only {} requests completed in {elapsed:?}: {s:?}", s.ok + s.failed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = self.started;
        let out = self.stop().await;
        (out, started.elapsed())
    }

    /// Stops the workers (letting in-flight requests finish) and returns the outcome.
    pub async fn stop(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        while self.workers.join_next().await.is_some() {}
        self.snapshot()
    }
}

type Attempt = Result<
    Result<(http::StatusCode, Option<String>, Bytes), Box<dyn std::error::Error + Send + Sync>>,
    tokio::time::error::Elapsed,
>;

fn record(outcome: &Mutex<Outcome>, res: Attempt) {
    let mut o = outcome.lock().unwrap();
    match res {
        Ok(Ok((status, replica, _))) if status.is_success() => {
            o.ok += 1;
            *o.by_replica.entry(replica.unwrap_or_default()).or_default() += 1;
        }
        Ok(Ok((status, _, body))) => {
            o.failed += 1;
            if o.errors.len() < 5 {
                o.errors.push(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
        }
        Ok(Err(e)) => {
            o.failed += 1;
            if o.errors.len() < 5 {
                o.errors.push(format!("transport: {e:?}"));
            }
        }
        Err(_) => {
            o.failed += 1;
            if o.errors.len() < 5 {
                o.errors.push("timed out after 10s".into());
            }
        }
    }
}
