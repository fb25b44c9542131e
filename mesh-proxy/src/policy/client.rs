//! Watching policies from the control plane: one stream per outbound target
//! and per inbound port, shared by everything that needs it, compiled on
//! arrival. A policy that does not compile is refused and the previous one
//! stays; when the control plane is away the last policy stays in force.

use mesh_core::backoff::Backoff;
use mesh_policy::inbound::InboundPolicy;
use mesh_policy::outbound::OutboundPolicy;
use mesh_proto::policy::{InboundRequest, OutboundRequest, policy_client::PolicyClient};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

/// A shared, live policy; the stream behind it runs while a handle lives.
#[derive(Debug)]
pub struct Live<T>(Arc<watch::Receiver<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// A policy that can be "not known yet" (before the control plane's first
/// answer).
pub trait Awaited: Default {
    /// The placeholder until the first answer.
    fn pending() -> Self;
    /// Whether this is the placeholder.
    fn is_pending(&self) -> bool;
}

impl Awaited for InboundPolicy {
    fn pending() -> Self {
        InboundPolicy::pending()
    }

    fn is_pending(&self) -> bool {
        InboundPolicy::is_pending(self)
    }
}

impl Awaited for OutboundPolicy {
    fn pending() -> Self {
        OutboundPolicy::pending()
    }

    fn is_pending(&self) -> bool {
        OutboundPolicy::is_pending(self)
    }
}

impl<T: Awaited> Live<T> {
    /// The policy in force, waiting up to `timeout` for the control plane's
    /// first answer (what happens after that is the policy type's call:
    /// inbound fails closed, outbound routes by default).
    pub async fn ready(&self, timeout: Duration) -> Arc<T> {
        let current = self.current();
        if !current.is_pending() {
            return current;
        }
        let mut rx = (*self.0).clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|p| !p.is_pending())).await;
        self.current()
    }
}

impl<T> Live<T> {
    /// The policy in force.
    pub fn current(&self) -> Arc<T> {
        self.0.borrow().clone()
    }

    /// A fixed policy (no control plane).
    pub fn fixed(value: T) -> Self {
        let (_tx, rx) = watch::channel(Arc::new(value));
        Self(Arc::new(rx))
    }
}

type Registry<K, T> = Mutex<HashMap<K, Weak<watch::Receiver<Arc<T>>>>>;

/// Watches policies through the control plane.
#[derive(Debug, Clone)]
pub struct Policies {
    client: Option<PolicyClient<Channel>>,
    outbound: Arc<Registry<String, OutboundPolicy>>,
    inbound: Arc<Registry<(String, String, u16), InboundPolicy>>,
}

impl Policies {
    /// Policies from the control plane on `channel`; without one, defaults.
    pub fn new(channel: Option<Channel>) -> Self {
        Self { client: channel.map(PolicyClient::new), outbound: Arc::default(), inbound: Arc::default() }
    }

    /// The outbound policy for `target`.
    pub fn outbound(&self, target: &str) -> Live<OutboundPolicy> {
        let client = self.client.clone();
        let req = OutboundRequest { target: target.to_string() };
        share(&self.outbound, target.to_string(), client, move |c, tx| async move {
            let what = format!("outbound policy for {}", req.target);
            let open = || {
                let (req, mut c) = (req.clone(), c.clone());
                async move { Ok(c.watch_outbound(req).await?.into_inner()) }
            };
            follow(&what, tx, open, |p| OutboundPolicy::compile(&p)).await;
        })
    }

    /// The inbound policy for this workload's app `port`.
    pub fn inbound(&self, namespace: &str, service_account: &str, port: u16) -> Live<InboundPolicy> {
        let key = (namespace.to_string(), service_account.to_string(), port);
        let req = InboundRequest { namespace: key.0.clone(), service_account: key.1.clone(), port: u32::from(port) };
        share(&self.inbound, key, self.client.clone(), move |c, tx| async move {
            let what = format!("inbound policy for port {}", req.port);
            let open = || {
                let (req, mut c) = (req.clone(), c.clone());
                async move { Ok(c.watch_inbound(req).await?.into_inner()) }
            };
            follow(&what, tx, open, |p| InboundPolicy::compile(&p)).await;
        })
    }
}

fn share<K, T, F, Fut>(reg: &Registry<K, T>, key: K, client: Option<PolicyClient<Channel>>, run: F) -> Live<T>
where
    K: std::hash::Hash + Eq,
    T: Awaited + Send + Sync + 'static,
    F: FnOnce(PolicyClient<Channel>, watch::Sender<Arc<T>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut map = reg.lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(rx) = map.get(&key).and_then(Weak::upgrade) {
        return Live(rx);
    }
    // Without a control plane the defaults are the answer; with one, the
    // policy is pending until it speaks.
    let initial = if client.is_some() { T::pending() } else { T::default() };
    let (tx, rx) = watch::channel(Arc::new(initial));
    let rx = Arc::new(rx);
    map.insert(key, Arc::downgrade(&rx));
    if let Some(client) = client {
        tokio::spawn(run(client, tx));
    }
    Live(rx)
}

async fn follow<P, T, S, SF, C>(what: &str, tx: watch::Sender<Arc<T>>, mut open: S, compile: C)
where
    S: FnMut() -> SF,
    SF: std::future::Future<Output = Result<tonic::Streaming<P>, tonic::Status>>,
    C: Fn(P) -> Result<T, mesh_policy::matcher::InvalidPolicy>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !tx.is_closed() {
        let result = async {
            let mut stream = open().await?;
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m?,
                    _ = tx.closed() => return Ok(()),
                };
                let Some(p) = msg else { return Ok(()) };
                backoff.reset();
                match compile(p) {
                    Ok(t) => {
                        tx.send_replace(Arc::new(t));
                    }
                    Err(e) => tracing::error!(%e, "{what} refused; keeping the previous policy"),
                }
            }
        }
        .await;
        if tx.is_closed() {
            return;
        }
        let delay = backoff.next_delay();
        if let Err(e) = result {
            let e: tonic::Status = e;
            tracing::debug!(code = ?e.code(), message = e.message(), ?delay, "{what}: watch failed; keeping the last policy");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
    }
}
