//! The containers, volumes and annotations an injection adds, built from the
//! mesh's configuration and the pod's overrides.

use super::{INIT_CONTAINER, INJECTED_ANNOTATION, InjectConfig, Injection, Overrides, PROXY_CONTAINER, probes};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The projected service-account token volume.
pub const TOKEN_VOLUME: &str = "mesh-identity-token";
/// Where the proxy reads its token.
pub const TOKEN_DIR: &str = "/var/run/mesh/identity";
/// The iptables lock's scratch volume (the root filesystem is read-only).
pub const XTABLES_VOLUME: &str = "mesh-init-xtables-lock";
/// Volumes injection adds (and uninjection removes).
pub const VOLUMES: &[&str] = &[TOKEN_VOLUME, XTABLES_VOLUME];
/// The projected token's lifetime; kubelet refreshes it at 80 %.
const TOKEN_SECONDS: i64 = 3600;

pub(super) fn injection(o: &Overrides, c: &InjectConfig, spec: &PodSpec) -> Injection {
    let (probe_rewrites, app_probes) =
        if o.rewrite_app_probes { probes::rewrites(spec, c.ports.admin) } else { (Vec::new(), None) };
    let mut proxy = proxy_container(o, c);
    if let (Some(json), Some(env)) = (app_probes, proxy.env.as_mut()) {
        env.push(self::env(probes::APP_PROBES_ENV, json));
    }
    Injection {
        init_containers: vec![init_container(o, c), proxy],
        volumes: vec![token_volume(c), xtables_volume()],
        annotations: BTreeMap::from([(INJECTED_ANNOTATION.to_string(), c.version.clone())]),
        probe_rewrites,
    }
}

fn join(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn init_container(o: &Overrides, c: &InjectConfig) -> Container {
    let mut args = vec![
        "init".to_string(),
        "--proxy-uid".into(),
        c.proxy_uid.to_string(),
        "--inbound-port".into(),
        c.ports.inbound.to_string(),
        "--outbound-port".into(),
        c.ports.outbound.to_string(),
        "--admin-port".into(),
        c.ports.admin.to_string(),
    ];
    if !o.skip_inbound_ports.is_empty() {
        args.extend(["--skip-inbound-ports".into(), join(&o.skip_inbound_ports)]);
    }
    if !o.skip_outbound_ports.is_empty() {
        args.extend(["--skip-outbound-ports".into(), join(&o.skip_outbound_ports)]);
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(c.proxy_image.clone()),
        args: Some(args),
        resources: Some(resources("10m", "10Mi", None, Some("50Mi"))),
        security_context: Some(SecurityContext {
            // iptables needs root in the pod's network namespace, and exactly
            // these two capabilities; nothing else is granted.
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: XTABLES_VOLUME.into(),
            mount_path: "/run".into(),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn env_field(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: field.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: u16, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn proxy_container(o: &Overrides, c: &InjectConfig) -> Container {
    let mut env = vec![
        env_field("MESH_POD_NAME", "metadata.name"),
        env_field("MESH_POD_NAMESPACE", "metadata.namespace"),
        env_field("MESH_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        // Dependent variables: Kubernetes expands $(VAR) from those above.
        env("MESH_WORKLOAD", "$(MESH_POD_NAME).$(MESH_POD_NAMESPACE)"),
        env("MESH_CONTROL_PLANE", c.control_plane.clone()),
        env("MESH_TRANSPARENT", "true"),
        // Inbound and outbound listen on the proxy's defaults, which follow
        // the pod's address families (IPv4, IPv6 or both).
        env("MESH_ADMIN_ADDR", format!("0.0.0.0:{}", c.ports.admin)),
        env("MESH_IDENTITY_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        // What the projected token proves; the control plane signs nothing else.
        env(
            "MESH_IDENTITY",
            format!("spiffe://{}/ns/$(MESH_POD_NAMESPACE)/sa/$(MESH_SERVICE_ACCOUNT)", c.trust_domain),
        ),
        env("MESH_TRUST_ANCHORS_PEM", c.trust_anchors_pem.clone()),
        env("MESH_LOG", o.resources.log_level.clone()),
    ];
    if !o.opaque_ports.is_empty() {
        env.push(self::env("MESH_OPAQUE_PORTS", join(&o.opaque_ports)));
    }
    let r = &o.resources;
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(c.proxy_image.clone()),
        // A native sidecar: started before the app's containers, stopped after them.
        restart_policy: Some("Always".into()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("mesh-admin".into()),
            container_port: i32::from(c.ports.admin),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // The app's containers start only once the proxy holds a certificate
        // and its first discovery answers (what /ready reports).
        startup_probe: Some(http_probe("/ready", c.ports.admin, 1, 120)),
        readiness_probe: Some(http_probe("/ready", c.ports.admin, 10, 3)),
        liveness_probe: Some(http_probe("/live", c.ports.admin, 10, 3)),
        resources: Some(resources(
            &r.cpu_request,
            &r.memory_request,
            r.cpu_limit.as_deref(),
            r.memory_limit.as_deref(),
        )),
        security_context: Some(SecurityContext {
            run_as_user: Some(c.proxy_uid),
            run_as_group: Some(c.proxy_uid),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { add: None, drop: Some(vec!["ALL".into()]) }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn resources(cpu: &str, memory: &str, cpu_limit: Option<&str>, memory_limit: Option<&str>) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    let requests = BTreeMap::from([("cpu".to_string(), q(cpu)), ("memory".to_string(), q(memory))]);
    let mut limits = BTreeMap::new();
    if let Some(l) = cpu_limit {
        limits.insert("cpu".to_string(), q(l));
    }
    if let Some(l) = memory_limit {
        limits.insert("memory".to_string(), q(l));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

fn token_volume(c: &InjectConfig) -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(c.token_audience.clone()),
                    expiration_seconds: Some(TOKEN_SECONDS),
                    path: "token".into(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn xtables_volume() -> Volume {
    Volume { name: XTABLES_VOLUME.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() }
}
