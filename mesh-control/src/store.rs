//! The store: the control plane's index of services and endpoints, and the
//! watches proxies hold on it.
//!
//! Registries write into the store (a whole snapshot from the file registry;
//! per-service upserts from a Kubernetes controller); the discovery and policy
//! APIs read from it. Each watched target (and each watched workload port for
//! inbound policy) has its own `watch` channel, so a change to one service
//! wakes only the streams whose answer changed.

use mesh_proto::policy::{InboundPolicy, OutboundPolicy};
use mesh_registry::index::Index;
use mesh_registry::model::{AuthorizationPolicy, RegistrySnapshot, RoutePolicy, Service, ServiceKey};
use mesh_registry::sink::RegistrySink;
use mesh_registry::target::{IdentityNaming, Resolution, Target};
use mesh_registry::translate::{self as policy, InboundTarget};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Shared, cloneable handle to the index.
#[derive(Debug, Clone, Default)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    index: Index,
    watches: HashMap<Target, watch::Sender<Arc<Resolution>>>,
    outbound: HashMap<Target, watch::Sender<Arc<OutboundPolicy>>>,
    inbound: HashMap<InboundTarget, watch::Sender<Arc<InboundPolicy>>>,
    /// When the registry last changed, to measure how fast proxies hear of it.
    changed_at: Option<std::time::Instant>,
}

impl Store {
    /// An empty store; `identity` names endpoint identities once the mesh has a CA.
    pub fn new(identity: Option<IdentityNaming>) -> Self {
        let mut inner = Inner::default();
        inner.index.set_identity(identity);
        Self { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update; the
        // index is rebuilt whole on each change, so its data is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets how endpoint identities are named (once the CA is known).
    pub fn set_identity(&self, identity: Option<IdentityNaming>) {
        let mut inner = self.lock();
        inner.index.set_identity(identity);
        inner.notify();
    }

    /// Replaces everything (services and policies) with `snapshot` and
    /// notifies the watches whose answer changed.
    pub fn replace_all(&self, snapshot: &RegistrySnapshot) {
        let mut inner = self.lock();
        inner.index.replace_all(snapshot);
        inner.notify();
    }

    /// Adds or replaces one service.
    pub fn upsert(&self, service: Service) {
        let mut inner = self.lock();
        inner.index.upsert(service);
        inner.notify();
    }

    /// Removes one service.
    pub fn remove(&self, key: &ServiceKey) {
        let mut inner = self.lock();
        if inner.index.remove(key) {
            inner.notify();
        }
    }

    /// Replaces every route and authorization policy (services stay).
    pub fn replace_policies(&self, routes: Vec<RoutePolicy>, authorizations: Vec<AuthorizationPolicy>) {
        let mut inner = self.lock();
        inner.index.replace_policies(routes, authorizations);
        inner.notify();
    }

    /// Subscribes to a target's resolution; the receiver holds the current
    /// answer and is notified on every change.
    pub fn watch(&self, target: &Target) -> watch::Receiver<Arc<Resolution>> {
        let mut inner = self.lock();
        let Inner { index, watches, .. } = &mut *inner;
        subscribe(watches, target, || index.resolve(target))
    }

    /// Subscribes to a target's outbound policy; notified only when it changes.
    pub fn watch_outbound(&self, target: &Target) -> watch::Receiver<Arc<OutboundPolicy>> {
        let mut inner = self.lock();
        let Inner { index, outbound, .. } = &mut *inner;
        subscribe(outbound, target, || policy::outbound(index, target))
    }

    /// Subscribes to a workload port's inbound policy; notified only when it changes.
    pub fn watch_inbound(&self, target: &InboundTarget) -> watch::Receiver<Arc<InboundPolicy>> {
        let mut inner = self.lock();
        let Inner { index, inbound, .. } = &mut *inner;
        subscribe(inbound, target, || policy::inbound(index, target))
    }

    /// The current answer for a target, without watching.
    pub fn resolve(&self, target: &Target) -> Resolution {
        self.lock().index.resolve(target)
    }

    /// The current outbound policy for a target, without watching.
    pub fn outbound_policy(&self, target: &Target) -> OutboundPolicy {
        policy::outbound(&self.lock().index, target)
    }

    /// The current inbound policy for a workload port, without watching.
    pub fn inbound_policy(&self, target: &InboundTarget) -> InboundPolicy {
        policy::inbound(&self.lock().index, target)
    }

    /// When the store last changed (a registry reload or object change).
    pub fn changed_at(&self) -> Option<std::time::Instant> {
        self.lock().changed_at
    }

    /// A copy of the index, for answering many questions from one moment.
    pub fn index(&self) -> Index {
        self.lock().index.clone()
    }

    /// Number of open Destination watch streams (receivers) across targets.
    pub fn watchers(&self) -> usize {
        self.lock().watches.values().map(|w| w.receiver_count()).sum()
    }

    /// Numbers of services and endpoints in the index.
    pub fn size(&self) -> (usize, usize) {
        self.lock().index.size()
    }
}

/// A receiver for `key`'s channel, creating it with `current` when needed.
fn subscribe<K, T>(
    channels: &mut HashMap<K, watch::Sender<Arc<T>>>,
    key: &K,
    current: impl FnOnce() -> T,
) -> watch::Receiver<Arc<T>>
where
    K: Clone + Eq + std::hash::Hash,
{
    if let Some(tx) = channels.get(key) {
        return tx.subscribe();
    }
    let (tx, rx) = watch::channel(Arc::new(current()));
    channels.insert(key.clone(), tx);
    rx
}

/// Drops channels nobody listens to, then sends each remaining one its new
/// answer if (and only if) it changed.
fn refresh<K, T: PartialEq>(channels: &mut HashMap<K, watch::Sender<Arc<T>>>, answer: impl Fn(&K) -> T) {
    channels.retain(|_, tx| tx.receiver_count() > 0);
    for (key, tx) in channels.iter() {
        let next = answer(key);
        tx.send_if_modified(|cur| {
            if **cur == next {
                return false;
            }
            *cur = Arc::new(next);
            true
        });
    }
}

impl Inner {
    fn notify(&mut self) {
        self.changed_at = Some(std::time::Instant::now());
        let Inner { index, watches, outbound, inbound, .. } = self;
        refresh(watches, |t| index.resolve(t));
        refresh(outbound, |t| policy::outbound(index, t));
        refresh(inbound, |t| policy::inbound(index, t));
    }
}

impl RegistrySink for Store {
    fn replace_all(&self, snapshot: &RegistrySnapshot) {
        Store::replace_all(self, snapshot);
    }

    fn upsert(&self, service: Service) {
        Store::upsert(self, service);
    }

    fn remove(&self, key: &ServiceKey) {
        Store::remove(self, key);
    }

    fn replace_policies(&self, routes: Vec<RoutePolicy>, authorizations: Vec<AuthorizationPolicy>) {
        Store::replace_policies(self, routes, authorizations);
    }
}

#[cfg(test)]
mod tests;
