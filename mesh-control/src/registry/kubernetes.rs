//! The Kubernetes registry in the control plane: `mesh_kube`'s watch writing
//! into the store, and its counters on the admin port.

use mesh_core::shutdown::Shutdown;
use mesh_kube::KubeError;
use mesh_kube::registry::{KubernetesRegistry, RegistryStats};
use mesh_registry::sink::RegistrySink;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinSet;

/// How long start-up waits for the first list of Services and EndpointSlices.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to the cluster, starts the watch in `tasks` (until shutdown) and
/// returns once it has synced (see [`KubernetesRegistry::synced`]): a control
/// plane that served before would answer proxies with an empty registry, and
/// a reconnecting proxy replaces what it kept with the answer.
pub async fn start(
    client: mesh_kube::api::Client,
    sink: Arc<dyn RegistrySink>,
    mut shutdown: Shutdown,
    tasks: &mut JoinSet<()>,
) -> Result<KubernetesCollector, KubeError> {
    let registry = KubernetesRegistry::new(client, sink);
    let collector = KubernetesCollector(registry.stats());
    let mut synced = registry.synced();
    // On shutdown the registry releases the leader Lease, if it holds it.
    tasks.spawn(async move { registry.run_until(shutdown.triggered()).await });
    match tokio::time::timeout(SYNC_TIMEOUT, synced.wait_for(|done| *done)).await {
        Ok(Ok(_)) => Ok(collector),
        _ => Err(KubeError::Timeout {
            what: "listing Services and EndpointSlices (is the API server reachable, and may the control plane \
                   list and watch Services, EndpointSlices, the mesh's CRDs and Gateway API routes?)"
                .into(),
            seconds: SYNC_TIMEOUT.as_secs(),
        }),
    }
}

/// `registry_kubernetes_*` counters, read from the registry's stats at each scrape.
#[derive(Debug)]
pub struct KubernetesCollector(pub RegistryStats);

impl Collector for KubernetesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let counters = [
            ("registry_kubernetes_changes", "Services and policy sets written to the store", &self.0.applied),
            (
                "registry_kubernetes_problems",
                "Problems found in Kubernetes objects (each also a Warning Event on the object); those objects are not served",
                &self.0.problems,
            ),
            (
                "registry_kubernetes_watch_errors",
                "Kubernetes watch errors (retried with backoff)",
                &self.0.watch_errors,
            ),
            (
                "registry_kubernetes_status_writes",
                "Status conditions written on routes and policies (only by the replica that leads)",
                &self.0.status_writes,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        let leading = ConstGauge::new(i64::from(self.0.leading.load(Ordering::Relaxed)));
        leading.encode(encoder.encode_descriptor(
            "registry_kubernetes_leader",
            "1 while this replica holds the leader Lease (writes status and Events), else 0",
            None,
            leading.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches the counters not exposed, or exposed under other names than
    /// dashboards and alerts use.
    #[test]
    fn counters_are_exposed() {
        let stats = RegistryStats::default();
        stats.problems.store(3, Ordering::Relaxed);
        stats.watch_errors.store(1, Ordering::Relaxed);
        stats.status_writes.store(2, Ordering::Relaxed);
        stats.leading.store(true, Ordering::Relaxed);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(KubernetesCollector(stats)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("registry_kubernetes_problems_total 3"), "{text}");
        assert!(text.contains("registry_kubernetes_watch_errors_total 1"), "{text}");
        assert!(text.contains("registry_kubernetes_changes_total 0"), "{text}");
        assert!(text.contains("registry_kubernetes_status_writes_total 2"), "{text}");
        assert!(text.contains("registry_kubernetes_leader 1"), "{text}");
    }
}
