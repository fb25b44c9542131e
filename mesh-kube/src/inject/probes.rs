//! Kubelet probes through the proxy's admin port.
//!
//! In strict mode the inbound proxy refuses plaintext, and kubelet probes
//! app ports in plaintext from the node. Injection therefore rewrites each
//! app container's `httpGet` and `tcpSocket` liveness, readiness and startup
//! probes to `GET <admin port>/app-health/<container>/<kind>` (timings kept)
//! and gives the proxy the original probes in [`APP_PROBES_ENV`] (JSON),
//! which it performs against the app on loopback. Uninjection puts the
//! originals back from that same variable, exactly as they were.
//!
//! Left alone: `exec` and `grpc` probes, probes with a `host` (they do not
//! target the pod), and probes naming a port the container does not declare.

use super::PROXY_CONTAINER;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

/// The proxy's environment variable holding the original probes.
pub const APP_PROBES_ENV: &str = "MESH_APP_PROBES";
/// The admin path prefix of rewritten probes.
pub const PATH_PREFIX: &str = "/app-health/";

/// The probe fields rewritten, with the kind used in the admin path.
const FIELDS: &[(&str, &str)] =
    &[("livenessProbe", "liveness"), ("readinessProbe", "readiness"), ("startupProbe", "startup")];

/// One probe to replace in `spec.containers[container]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRewrite {
    /// The container's index in `spec.containers`.
    pub container: usize,
    /// `livenessProbe`, `readinessProbe` or `startupProbe`.
    pub field: &'static str,
    /// The probe kubelet will run instead.
    pub probe: Probe,
}

fn probe_of<'a>(c: &'a Container, field: &str) -> Option<&'a Probe> {
    match field {
        "livenessProbe" => c.liveness_probe.as_ref(),
        "readinessProbe" => c.readiness_probe.as_ref(),
        "startupProbe" => c.startup_probe.as_ref(),
        _ => None,
    }
}

/// The app port a probe targets: its number, or its name looked up in the
/// container's ports (`None` when the name is not declared).
fn resolve(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p != 0),
        IntOrString::String(s) => match s.parse::<u16>() {
            Ok(n) => Some(n).filter(|p| *p != 0),
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        },
    }
}

/// The app port of a probe the proxy can perform, or `None` to leave it.
fn target(c: &Container, p: &Probe) -> Option<u16> {
    if p.exec.is_some() || p.grpc.is_some() {
        return None;
    }
    match (&p.http_get, &p.tcp_socket) {
        (Some(h), None) if h.host.as_deref().is_none_or(str::is_empty) => resolve(c, &h.port),
        (None, Some(t)) if t.host.as_deref().is_none_or(str::is_empty) => resolve(c, &t.port),
        _ => None,
    }
}

/// The rewrites for `spec`'s app containers, and the value of
/// [`APP_PROBES_ENV`] (`None` when there is nothing to rewrite).
pub(super) fn rewrites(spec: &PodSpec, admin_port: u16) -> (Vec<ProbeRewrite>, Option<String>) {
    let mut out = Vec::new();
    let mut entries = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        for (field, kind) in FIELDS {
            let Some(original) = probe_of(c, field) else { continue };
            let Some(port) = target(c, original) else { continue };
            let path = format!("{PATH_PREFIX}{}/{kind}", c.name);
            entries.push(json!({
                "path": path, "container": c.name, "field": field, "port": port,
                "probe": serde_json::to_value(original).unwrap_or(Value::Null),
            }));
            let probe = Probe {
                exec: None,
                grpc: None,
                tcp_socket: None,
                http_get: Some(HTTPGetAction {
                    path: Some(path),
                    port: IntOrString::Int(i32::from(admin_port)),
                    ..Default::default()
                }),
                ..original.clone()
            };
            out.push(ProbeRewrite { container: i, field, probe });
        }
    }
    let env = (!entries.is_empty()).then(|| Value::Array(entries).to_string());
    (out, env)
}

/// What uninjection puts back: (container index, field, original probe as
/// written) for each rewritten probe still in place.
pub(super) fn originals(spec: &PodSpec) -> Vec<(usize, String, Value)> {
    let proxy = spec.init_containers.iter().flatten().chain(spec.containers.iter()).find(|c| c.name == PROXY_CONTAINER);
    let Some(json) =
        proxy.and_then(|p| p.env.iter().flatten().find(|e| e.name == APP_PROBES_ENV)).and_then(|e| e.value.as_deref())
    else {
        return Vec::new();
    };
    let entries: Vec<Value> = serde_json::from_str(json).unwrap_or_default();
    let mut out = Vec::new();
    for e in entries {
        let (Some(name), Some(field), Some(path), Some(original)) =
            (e["container"].as_str(), e["field"].as_str(), e["path"].as_str(), e.get("probe"))
        else {
            continue;
        };
        let Some((i, c)) = spec.containers.iter().enumerate().find(|(_, c)| c.name == name) else { continue };
        // Only a probe still pointing at the proxy: one the user changed since stays theirs.
        let ours =
            probe_of(c, field).and_then(|p| p.http_get.as_ref()).is_some_and(|h| h.path.as_deref() == Some(path));
        if ours {
            out.push((i, field.to_string(), original.clone()));
        }
    }
    out
}
