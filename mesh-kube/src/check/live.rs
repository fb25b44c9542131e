//! `meshctl check`'s live probe, the I/O half: reads the meshed pods,
//! Services, EndpointSlices and AuthorizationPolicies, picks two workloads
//! ([`super::probe::choose`]), asks the source pod's proxy to probe the
//! target through the API server's `pods/NAME:PORT/proxy` subresource
//! (RBAC: `create` on `pods/proxy`), and judges its report against what the
//! policy implies ([`super::probe::expected`], [`super::rules::live_probe`]).

use super::Check;
use super::probe::{self, Choice, Pair, Workload};
use super::rules::{self, ProbeReport};
use crate::crd::AuthorizationPolicy;
use crate::registry::policy::authorizations_from;
use crate::registry::service::{SERVICE_NAME_LABEL, service_with_accounts};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use mesh_registry::model::RegistrySnapshot;
use std::collections::BTreeMap;
use std::time::Duration;

const NAME: &str = "live probe";

/// The proxy's admin port when its container names none.
const ADMIN_PORT: u16 = 4191;

/// What the probe reads from the cluster.
struct Cluster {
    workloads: Vec<Workload>,
    services: Vec<probe::Service>,
    snapshot: RegistrySnapshot,
}

async fn list<K>(api: Api<K>, what: &str) -> Result<Vec<K>, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default()).await.map(|l| l.items).map_err(|e| format!("cannot list {what}: {e}"))
}

async fn read(client: &Client) -> Result<Cluster, String> {
    let pods = list(Api::<Pod>::all(client.clone()), "pods").await?;
    let kube_services = list(Api::<Service>::all(client.clone()), "services").await?;
    let slices = list(Api::<EndpointSlice>::all(client.clone()), "endpointslices").await?;
    // No CRD (or no permission): no policy, as the control plane would see it.
    let policies = list(Api::<AuthorizationPolicy>::all(client.clone()), "authorizationpolicies").await;
    let policies = policies.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "no AuthorizationPolicies read");
        Vec::new()
    });
    let workloads = pods.iter().filter_map(workload).collect();
    let services = kube_services
        .iter()
        .map(|s| {
            let spec = s.spec.clone().unwrap_or_default();
            probe::Service {
                namespace: s.namespace().unwrap_or_default(),
                name: s.name_any(),
                selector: spec.selector.unwrap_or_default(),
                ports: spec.ports.unwrap_or_default().iter().filter_map(|p| u16::try_from(p.port).ok()).collect(),
            }
        })
        .collect();
    let mut model = Vec::new();
    for s in &kube_services {
        let ns = s.namespace().unwrap_or_default();
        let own: Vec<EndpointSlice> = slices
            .iter()
            .filter(|e| {
                e.namespace().as_deref() == Some(&ns) && e.labels().get(SERVICE_NAME_LABEL) == Some(&s.name_any())
            })
            .cloned()
            .collect();
        let accounts: BTreeMap<String, String> =
            pods.iter().filter(|p| p.namespace().as_deref() == Some(&ns)).map(|p| (p.name_any(), account(p))).collect();
        if let Ok(m) = service_with_accounts(s, &own, &accounts) {
            model.push(m);
        }
    }
    let (authorizations, _) = authorizations_from(&policies);
    Ok(Cluster {
        workloads,
        services,
        snapshot: RegistrySnapshot { services: model, routes: Vec::new(), authorizations },
    })
}

fn account(p: &Pod) -> String {
    p.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into())
}

/// A pod with the proxy container, not terminating.
fn workload(p: &Pod) -> Option<Workload> {
    if p.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let proxy = p.spec.as_ref()?.init_containers.as_ref()?.iter().find(|c| c.name == crate::inject::PROXY_CONTAINER)?;
    let admin_port = proxy
        .ports
        .iter()
        .flatten()
        .find(|port| port.name.as_deref() == Some("mesh-admin"))
        .and_then(|port| u16::try_from(port.container_port).ok())
        .unwrap_or(ADMIN_PORT);
    let status = p.status.as_ref();
    let proxy_ready = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|st| st.iter().find(|s| s.name == crate::inject::PROXY_CONTAINER))
        .is_some_and(|s| s.ready);
    Some(Workload {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        labels: p.labels().clone(),
        service_account: account(p),
        ip: status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()),
        proxy_ready,
        admin_port,
    })
}

/// `POST /check/probe` on the source pod's proxy, through the API server.
async fn call(client: &Client, pair: &Pair) -> Result<ProbeReport, Check> {
    let w = &pair.source;
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}:{}/proxy/check/probe?target={}",
        w.namespace,
        w.name,
        w.admin_port,
        pair.target()
    );
    let pod = w.id();
    for attempt in 0..3 {
        let req = http::Request::post(path.as_str())
            .body(Vec::new())
            .map_err(|e| Check::fail(NAME, e.to_string(), "a bug in meshctl"))?;
        match client.request_text(req).await {
            Ok(text) => {
                return serde_json::from_str(&text).map_err(|e| {
                    Check::fail(
                        NAME,
                        format!("{pod}'s proxy answered something other than a probe report: {e}"),
                        "its proxy may be older than meshctl: `kubectl rollout restart` its workload",
                    )
                });
            }
            // Another check is probing from the same proxy: wait out its second.
            Err(kube::Error::Api(s)) if s.code == 429 && attempt < 2 => {
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(Check::fail(
                    NAME,
                    format!("not allowed to reach {pod}'s proxy: {}", s.message.trim()),
                    format!("the live probe needs `create` on `pods/proxy` in namespace {}", w.namespace),
                ));
            }
            Err(e) => {
                return Err(Check::fail(
                    NAME,
                    format!("calling {pod}'s proxy (port {}): {}", w.admin_port, e.to_string().trim()),
                    "see `kubectl logs POD -c mesh-proxy`; a 404 means a proxy older than meshctl",
                ));
            }
        }
    }
    Err(Check::fail(NAME, format!("{pod}'s proxy kept refusing: probes are rate limited"), "run the check again"))
}

/// The live probe between two meshed workloads (`from`: `namespace/pod`,
/// `to`: `name.namespace:port`; chosen when not given), or a skip when the
/// mesh has fewer than two.
pub async fn live_probe(client: &Client, from: Option<&str>, to: Option<&str>) -> Check {
    let cluster = match read(client).await {
        Ok(c) => c,
        Err(e) => return Check::fail(NAME, e, "check your permissions"),
    };
    // For choosing only: a decision that hangs on the trust domain (an
    // explicit SPIFFE ID in a rule) is judged with the real one below.
    let allowed = |w: &Workload, s: &mesh_policy::model::ServiceKey, port: u16| {
        let id = format!("spiffe://cluster.local/ns/{}/sa/{}", w.namespace, w.service_account);
        probe::expected(&cluster.snapshot, &id, w.ip, s, port).is_ok_and(|(a, _)| a)
    };
    let pair = match probe::choose(&cluster.workloads, &cluster.services, from, to, allowed) {
        Choice::Probe(p) => p,
        Choice::Skip(why) => return Check::skip(NAME, why),
        Choice::Invalid(why) => {
            return Check::fail(
                NAME,
                why,
                "give --probe-from NAMESPACE/POD (a meshed pod) and --probe-to NAME.NAMESPACE:PORT (a meshed Service port)",
            );
        }
    };
    let report = match call(client, &pair).await {
        Ok(r) => r,
        Err(c) => return c,
    };
    let from = format!("from {}: ", pair.source.id());
    if report.error.is_some() {
        let mut c = Check::from(NAME, rules::live_probe(&report, true));
        c.detail.insert_str(0, &from);
        return c;
    }
    let expect = probe::expected(&cluster.snapshot, &report.source_identity, pair.source.ip, &pair.service, pair.port);
    let (expect, by) = match expect {
        Ok(e) => e,
        Err(e) => return Check::fail(NAME, format!("{from}{e}"), "see the target Service's Events"),
    };
    let mut c = Check::from(NAME, rules::live_probe(&report, expect));
    c.detail.insert_str(0, &from);
    match &report.decided_by {
        Some(got) if c.ok => c.detail.push_str(&format!(" (by {got})")),
        Some(got) if !c.ok => c.detail.push_str(&format!(" (decided by {got}; the policy's rule is {by})")),
        _ => {}
    }
    c
}
