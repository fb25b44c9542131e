//! The proxy's balancers by target: permanent ones for configured upstreams,
//! and ones made on demand for intercepted destinations, dropped after they
//! have been idle a while so an app dialling many addresses cannot grow the
//! proxy without bound.

use crate::balance::{Balancer, EndpointFactory};
use crate::discovery::Resolver;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Balancers by target.
#[derive(Debug, Clone)]
pub struct Balancers {
    inner: Arc<Mutex<Inner>>,
    resolver: Resolver,
    factory: EndpointFactory,
    idle: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Entry>,
    since_sweep: usize,
}

#[derive(Debug)]
struct Entry {
    balancer: Arc<Balancer>,
    last_used: Instant,
    permanent: bool,
}

impl Balancers {
    /// An empty set; on-demand balancers idle for `idle` are dropped.
    pub fn new(resolver: Resolver, factory: EndpointFactory, idle: Duration) -> Self {
        Self { inner: Arc::default(), resolver, factory, idle }
    }

    /// A balancer that lives as long as the proxy (a configured upstream).
    pub fn permanent(&self, target: &str) -> Arc<Balancer> {
        self.get_or_make(target, true)
    }

    /// A balancer for an intercepted destination.
    pub fn on_demand(&self, target: &str) -> Arc<Balancer> {
        self.get_or_make(target, false)
    }

    fn get_or_make(&self, target: &str, permanent: bool) -> Arc<Balancer> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.since_sweep += 1;
        if inner.since_sweep >= 256 {
            inner.since_sweep = 0;
            let idle = self.idle;
            // In use elsewhere (strong count > 1) means connections still hold it.
            inner.map.retain(|_, e| e.permanent || e.last_used.elapsed() < idle || Arc::strong_count(&e.balancer) > 1);
        }
        let now = Instant::now();
        if let Some(e) = inner.map.get_mut(target) {
            e.last_used = now;
            e.permanent |= permanent;
            return e.balancer.clone();
        }
        let balancer = Balancer::new(target, self.resolver.resolve(target), self.factory.clone());
        inner.map.insert(target.to_string(), Entry { balancer: balancer.clone(), last_used: now, permanent });
        balancer
    }

    /// Every balancer, by target, for `/config`.
    pub fn all(&self) -> Vec<Arc<Balancer>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Arc<Balancer>> = inner.map.values().map(|e| e.balancer.clone()).collect();
        v.sort_by(|a, b| a.target().cmp(b.target()));
        v
    }
}
