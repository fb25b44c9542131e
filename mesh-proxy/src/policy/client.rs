//! Watching policies from the control plane: one stream per outbound target
//! and per inbound port (a [`mesh_client::Watch`]), shared by everything that
//! needs it, compiled on arrival. A policy that does not compile is refused
//! and the previous one stays; when the control plane is away the last policy
//! stays in force.
//!
//! This module depends on the policy types, never the other way round.

use mesh_client::watch::{Source, Watch};
use mesh_policy::inbound::InboundPolicy;
use mesh_policy::matcher::InvalidPolicy;
use mesh_policy::outbound::OutboundPolicy;
use mesh_proto::policy::{InboundRequest, OutboundRequest, policy_client::PolicyClient};
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
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
        let req = OutboundRequest { target: target.to_string() };
        share(&self.outbound, target.to_string(), self.client.clone(), move |c| {
            let what = format!("outbound policy for {}", req.target);
            let open = move || {
                let (req, mut c) = (req.clone(), c.clone());
                async move { Ok(c.watch_outbound(req).await?.into_inner()) }
            };
            Follow::new(what, open, |p| OutboundPolicy::compile(&p))
        })
    }

    /// The inbound policy for this workload's app `port`.
    pub fn inbound(&self, namespace: &str, service_account: &str, port: u16) -> Live<InboundPolicy> {
        let key = (namespace.to_string(), service_account.to_string(), port);
        let req = InboundRequest { namespace: key.0.clone(), service_account: key.1.clone(), port: u32::from(port) };
        share(&self.inbound, key, self.client.clone(), move |c| {
            let what = format!("inbound policy for port {}", req.port);
            let open = move || {
                let (req, mut c) = (req.clone(), c.clone());
                async move { Ok(c.watch_inbound(req).await?.into_inner()) }
            };
            Follow::new(what, open, |p| InboundPolicy::compile(&p))
        })
    }
}

/// The shared [`Live`] for `key`, starting its watch (built by `source`) on
/// first use.
fn share<K, T, S>(
    reg: &Registry<K, T>,
    key: K,
    client: Option<PolicyClient<Channel>>,
    source: impl FnOnce(PolicyClient<Channel>) -> S,
) -> Live<T>
where
    K: std::hash::Hash + Eq,
    T: Awaited + Send + Sync + 'static,
    S: Source<State = Arc<T>>,
{
    let mut map = reg.lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(rx) = map.get(&key).and_then(Weak::upgrade) {
        return Live(rx);
    }
    // Without a control plane the defaults are the answer; with one, the
    // policy is pending until it speaks.
    let rx = match client {
        Some(client) => {
            let watch = Watch::new(source(client), Arc::new(T::pending()));
            let rx = watch.subscribe();
            // Runs while any handle on the policy lives.
            tokio::spawn(watch.run());
            rx
        }
        None => watch::channel(Arc::new(T::default())).1,
    };
    let rx = Arc::new(rx);
    map.insert(key, Arc::downgrade(&rx));
    Live(rx)
}

/// One policy stream: every message is a whole policy, compiled on arrival.
struct Follow<P, T, O, C> {
    what: String,
    open: O,
    compile: C,
    _policy: PhantomData<fn(P) -> T>,
}

impl<P, T, O, C> Follow<P, T, O, C> {
    fn new(what: String, open: O, compile: C) -> Self {
        Self { what, open, compile, _policy: PhantomData }
    }
}

impl<P, T, O, F, C> Source for Follow<P, T, O, C>
where
    P: Send + 'static,
    T: Send + Sync + 'static,
    O: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<tonic::Streaming<P>, tonic::Status>> + Send,
    C: Fn(P) -> Result<T, InvalidPolicy> + Send + 'static,
{
    type Item = P;
    type State = Arc<T>;
    type Stream = tonic::Streaming<P>;

    fn open(&mut self) -> impl Future<Output = Result<Self::Stream, tonic::Status>> + Send {
        (self.open)()
    }

    fn snapshot(&mut self, p: P) -> Option<Arc<T>> {
        match (self.compile)(p) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::error!(%e, "{} refused; keeping the previous policy", self.what);
                None
            }
        }
    }

    fn disconnected(&mut self, outcome: Result<(), &tonic::Status>, delay: Duration) {
        if let Err(e) = outcome {
            tracing::debug!(code = ?e.code(), message = e.message(), ?delay, "{}: watch failed; keeping the last policy", self.what);
        }
    }
}
