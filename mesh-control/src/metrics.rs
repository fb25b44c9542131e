//! The control plane's own metrics, served on its admin port.

use mesh_registry::model::RegistrySnapshot;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

/// Labels for registry reloads.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `file` or `kubernetes`.
    pub registry: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Registry health: reloads, their outcome, and the size of what is served.
#[derive(Debug, Clone, Default)]
pub struct RegistryMetrics {
    reloads: Family<ReloadLabels, Counter>,
    last_reload_ok: Gauge,
    last_reload_time: Gauge<f64, AtomicU64>,
    services: Gauge,
    endpoints: Gauge,
}

impl RegistryMetrics {
    /// Registers the metrics under `registry_*`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "registry_reloads",
            "Registry loads by outcome; an error keeps the last good registry in force",
            self.reloads.clone(),
        );
        reg.register(
            "registry_last_reload_success",
            "1 when the most recent registry load succeeded, 0 when it was rejected.",
            self.last_reload_ok.clone(),
        );
        reg.register(
            "registry_last_reload_timestamp_seconds",
            "Unix time of the most recent registry load attempt",
            self.last_reload_time.clone(),
        );
        reg.register("registry_services", "Services in force", self.services.clone());
        reg.register("registry_endpoints", "Endpoints in force", self.endpoints.clone());
    }

    /// Records an accepted registry.
    pub fn reload_ok(&self, registry: &'static str, snapshot: &RegistrySnapshot) {
        self.reloads.get_or_create(&ReloadLabels { registry, result: "ok" }).inc();
        self.last_reload_ok.set(1);
        self.stamp();
        self.services.set(snapshot.services.len() as i64);
        self.endpoints.set(snapshot.endpoint_count() as i64);
    }

    /// Records a rejected registry (the previous one stays in force).
    pub fn reload_failed(&self, registry: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { registry, result: "error" }).inc();
        self.last_reload_ok.set(0);
        self.stamp();
    }

    fn stamp(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64());
        self.last_reload_time.set(now.unwrap_or(0.0));
    }
}
