//! The verdicts of `meshctl check`, as pure functions of what was read.

use mesh_identity::ca::IssuerCa;
use mesh_identity::pem::{self, CertInfo};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// A verdict: what was found, or (what was found, what to do).
pub type Verdict = Result<String, (String, String)>;

/// Native sidecars (`restartPolicy: Always` init containers) are GA from 1.29.
pub fn native_sidecars(major: &str, minor: &str) -> Verdict {
    let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u32>().ok();
    match (digits(major), digits(minor)) {
        (Some(1), Some(m)) if m >= 29 => Ok(format!("Kubernetes {major}.{minor} runs native sidecars")),
        (Some(maj), Some(_)) if maj > 1 => Ok(format!("Kubernetes {major}.{minor} runs native sidecars")),
        (Some(_), Some(_)) => Err((
            format!("Kubernetes {major}.{minor} has no native sidecars"),
            "upgrade the cluster to 1.29 or later".into(),
        )),
        _ => Err((format!("unrecognised server version {major:?}.{minor:?}"), "check `kubectl version`".into())),
    }
}

/// Names (and kinds) of other meshes' injectors among the webhook configurations.
pub fn other_meshes(webhooks: &[(String, Vec<String>)]) -> Verdict {
    const OTHERS: &[(&str, &str)] = &[
        ("istio", "Istio"),
        ("linkerd", "Linkerd"),
        ("kuma", "Kuma"),
        ("consul", "Consul"),
        ("osm", "Open Service Mesh"),
    ];
    let mut found = Vec::new();
    for (config, hooks) in webhooks {
        for name in std::iter::once(config).chain(hooks) {
            if let Some((_, mesh)) = OTHERS.iter().find(|(needle, _)| name.to_lowercase().contains(needle)) {
                found.push(format!("{mesh} ({config})"));
                break;
            }
        }
    }
    if found.is_empty() {
        Ok("no other mesh's injector".into())
    } else {
        Err((
            format!("other meshes inject pods: {}", found.join(", ")),
            "two sidecars in one pod fight over iptables; uninstall the other mesh or keep its namespaces apart".into(),
        ))
    }
}

/// Whether each installed CRD's schema is the one this version renders.
pub fn crds_current(
    installed: &BTreeMap<String, serde_json::Value>,
    ours: &BTreeMap<String, serde_json::Value>,
) -> Verdict {
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for (name, versions) in ours {
        match installed.get(name) {
            None => missing.push(name.clone()),
            Some(theirs) if theirs != versions => stale.push(name.clone()),
            Some(_) => {}
        }
    }
    match (missing.is_empty(), stale.is_empty()) {
        (true, true) => Ok(format!("{} CRDs installed and current", ours.len())),
        (false, _) => Err((format!("missing CRDs: {}", missing.join(", ")), "run `meshctl install`".into())),
        (true, false) => Err((
            format!("CRDs from another version: {}", stale.join(", ")),
            "run `meshctl install` with this meshctl to upgrade them".into(),
        )),
    }
}

/// The issuer in the identity Secret: chained to the anchors, valid now,
/// with more than `warn` left.
pub fn issuer(secret: &BTreeMap<String, String>, now: SystemTime, warn: Duration) -> Verdict {
    let get = |k: &str| secret.get(k).map(String::as_str).unwrap_or_default();
    let anchors = match pem::certs(get(mesh_identity::dir::ANCHORS)) {
        Ok(a) if !a.is_empty() => a,
        _ => {
            return Err((
                "the identity Secret holds no trust anchors".into(),
                "run `meshctl install --identity-dir DIR` to store a valid identity".into(),
            ));
        }
    };
    let cert = get(mesh_identity::dir::ISSUER_CERT);
    if let Err(e) = IssuerCa::load(cert, get(mesh_identity::dir::ISSUER_KEY), &anchors) {
        return Err((
            format!("the issuer is not usable: {e}"),
            "rotate the issuer: `meshctl identity rotate issuer`, then reinstall".into(),
        ));
    }
    let info = pem::certs(cert).ok().and_then(|c| c.first().and_then(|d| CertInfo::parse(d).ok()));
    let Some(info) = info else { return Err(("the issuer certificate cannot be read".into(), "reinstall".into())) };
    let left = info.not_after.duration_since(now).unwrap_or(Duration::ZERO);
    let days = left.as_secs() / 86_400;
    if left < warn {
        Err((format!("the issuer expires in {days} days"), "rotate it now: `meshctl identity rotate issuer`".into()))
    } else {
        Ok(format!("issuer chained to the trust anchors, {days} days left"))
    }
}

/// What `meshctl check` knows of a meshed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshedPod {
    /// `namespace/name`.
    pub name: String,
    /// The proxy container's image.
    pub image: String,
    /// Whether the proxy reports ready (it is only when it holds a valid certificate).
    pub ready: bool,
}

/// Every meshed pod's proxy is ready and runs `version`.
pub fn proxies(pods: &[MeshedPod], version: &str) -> Verdict {
    let not_ready: Vec<_> = pods.iter().filter(|p| !p.ready).map(|p| p.name.clone()).collect();
    let old: Vec<_> =
        pods.iter().filter(|p| !p.image.ends_with(&format!(":{version}"))).map(|p| p.name.clone()).collect();
    if !not_ready.is_empty() {
        return Err((
            format!("proxies not ready (no certificate or no control plane): {}", not_ready.join(", ")),
            "see `kubectl logs POD -c mesh-proxy`".into(),
        ));
    }
    if !old.is_empty() {
        return Err((
            format!("proxies not on {version}: {}", old.join(", ")),
            "restart them (`kubectl rollout restart`) to pick up the installed proxy".into(),
        ));
    }
    Ok(format!("{} meshed pods, proxies ready and on {version}", pods.len()))
}

/// What one probe request through the data plane showed (as a source
/// proxy's admin endpoint would report it; see [`live_probe`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ProbeReport {
    /// The client identity the source proxy presented.
    pub source_identity: String,
    /// The target service (`name.namespace:port`).
    pub target: String,
    /// The identity discovery said the target's endpoint has.
    pub expected_identity: String,
    /// The identity in the certificate the target presented (`None`: no mTLS).
    pub peer_identity: Option<String>,
    /// The negotiated TLS version (`None`: plaintext).
    pub tls_version: Option<String>,
    /// Whether the target's authorization admitted the source (`None`: no answer).
    pub authorized: Option<bool>,
    /// Why the probe failed, when it did.
    pub error: Option<String>,
    /// The endpoint probed (`ip:port`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The target's deciding `policy/rule`.
    #[serde(default)]
    pub decided_by: Option<String>,
}

/// The live probe's verdict: a request from one meshed workload to
/// another went over mTLS to the identity discovery named, and the
/// target's authorization decided as `expect_allowed` says (a probe from an
/// identity the policy denies must be denied, or authorization is not on).
pub fn live_probe(report: &ProbeReport, expect_allowed: bool) -> Verdict {
    let what = format!("{} → {}", report.source_identity, report.target);
    if let Some(e) = &report.error {
        return Err((
            format!("{what}: {e}"),
            "see `meshctl diagnose` for the source pod and the target's endpoints".into(),
        ));
    }
    let (Some(peer), Some(version)) = (&report.peer_identity, &report.tls_version) else {
        return Err((format!("{what}: not over mTLS"), "the target is not meshed, or its port is skipped".into()));
    };
    if *peer != report.expected_identity {
        return Err((
            format!("{what}: the target presented {peer}, discovery expected {}", report.expected_identity),
            "a workload runs under another ServiceAccount than its Service's endpoints say".into(),
        ));
    }
    match (report.authorized, expect_allowed) {
        (Some(true), true) => Ok(format!("{what}: mTLS ({version}) with {peer}, allowed")),
        (Some(false), false) => Ok(format!("{what}: mTLS ({version}) with {peer}, denied as the policy says")),
        (Some(got), _) => Err((
            format!("{what}: {} but the policy says {}", allowed(got), allowed(expect_allowed)),
            "check the target's AuthorizationPolicies: `kubectl get authorizationpolicies -A`".into(),
        )),
        (None, _) => Err((format!("{what}: no authorization decision reported"), "a proxy older than meshctl".into())),
    }
}

fn allowed(b: bool) -> &'static str {
    if b { "allowed" } else { "denied" }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a live probe that passes plaintext, a peer with another
    /// identity than discovery expected, or an authorization decision other
    /// than the policy's (an allow-all proxy would pass a probe that must
    /// be denied).
    #[test]
    fn the_live_probe_needs_mtls_to_the_expected_identity_and_the_policys_decision() {
        let ok = ProbeReport {
            source_identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
            target: "books.shop:7001".into(),
            expected_identity: "spiffe://cluster.local/ns/shop/sa/books".into(),
            peer_identity: Some("spiffe://cluster.local/ns/shop/sa/books".into()),
            tls_version: Some("TLSv1.3".into()),
            authorized: Some(true),
            error: None,
            endpoint: None,
            decided_by: None,
        };
        assert!(live_probe(&ok, true).expect("passes").contains("mTLS (TLSv1.3)"));
        let denied = ProbeReport { authorized: Some(false), ..ok.clone() };
        assert!(live_probe(&denied, false).is_ok());
        assert!(live_probe(&denied, true).expect_err("denied").0.contains("denied but the policy says allowed"));
        assert!(live_probe(&ok, false).expect_err("allow-all").0.contains("allowed but the policy says denied"));
        let plain = ProbeReport { peer_identity: None, tls_version: None, ..ok.clone() };
        assert!(live_probe(&plain, true).expect_err("plaintext").0.contains("not over mTLS"));
        let other = ProbeReport { peer_identity: Some("spiffe://cluster.local/ns/shop/sa/x".into()), ..ok.clone() };
        assert!(live_probe(&other, true).expect_err("impostor").0.contains("discovery expected"));
        let failed = ProbeReport { error: Some("connection refused".into()), ..ok };
        assert!(live_probe(&failed, true).expect_err("failed").0.contains("connection refused"));
    }

    /// Catches a version check that compares strings ("1.9" > "1.29") or
    /// chokes on provider suffixes ("29+").
    #[test]
    fn native_sidecars_need_1_29() {
        assert!(native_sidecars("1", "29").is_ok());
        assert!(native_sidecars("1", "37+").is_ok());
        assert!(native_sidecars("1", "28").is_err());
        assert!(native_sidecars("1", "9").is_err());
        assert!(native_sidecars("", "").is_err());
    }

    /// Catches another mesh's injector going unnoticed.
    #[test]
    fn other_meshes_are_named() {
        let ok = other_meshes(&[("mesh-injector".into(), vec!["inject.mesh.dev".into()])]);
        assert!(ok.is_ok());
        let err = other_meshes(&[
            ("istio-sidecar-injector".into(), vec![]),
            ("x".into(), vec!["sidecar-injector.linkerd.io".into()]),
        ])
        .expect_err("found");
        assert!(err.0.contains("Istio") && err.0.contains("Linkerd"), "{}", err.0);
    }

    /// Catches an issuer check that does not verify the chain or the clock.
    #[test]
    fn the_issuer_must_chain_to_the_anchors_and_not_be_expiring() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = mesh_identity::dir::IdentityDir::new(dir.path().join("id"));
        id.init("cluster.local", None).expect("init");
        let read = |f: &str| std::fs::read_to_string(dir.path().join("id").join(f)).expect("file");
        let mut secret: BTreeMap<String, String> =
            [mesh_identity::dir::ANCHORS, mesh_identity::dir::ISSUER_CERT, mesh_identity::dir::ISSUER_KEY]
                .iter()
                .map(|f| (f.to_string(), read(f)))
                .collect();
        let now = SystemTime::now();
        assert!(issuer(&secret, now, Duration::from_secs(30 * 86_400)).is_ok());
        let expiring = issuer(&secret, now + Duration::from_secs(350 * 86_400), Duration::from_secs(30 * 86_400));
        assert!(expiring.expect_err("expiring").0.contains("expires in"));
        let other =
            mesh_identity::ca::generate_trust_anchor("cluster.local", Duration::from_secs(3600)).expect("anchor");
        secret.insert(mesh_identity::dir::ANCHORS.into(), other.cert_pem);
        assert!(issuer(&secret, now, Duration::ZERO).expect_err("not chained").0.contains("not usable"));
    }

    /// Catches a proxy check that passes unready or outdated proxies.
    #[test]
    fn proxies_must_be_ready_and_current() {
        let pod =
            |name: &str, tag: &str, ready| MeshedPod { name: name.into(), image: format!("r/mesh-proxy:{tag}"), ready };
        assert!(proxies(&[pod("a", "1.0", true)], "1.0").is_ok());
        assert!(proxies(&[pod("a", "1.0", false)], "1.0").expect_err("unready").0.contains("a"));
        assert!(proxies(&[pod("b", "0.9", true)], "1.0").expect_err("old").0.contains("b"));
    }

    /// Catches a CRD check that only looks for presence.
    #[test]
    fn crds_must_match_this_version() {
        let ours = BTreeMap::from([("a.mesh.dev".to_string(), serde_json::json!([{"name": "v1"}]))]);
        assert!(crds_current(&ours, &ours).is_ok());
        assert!(crds_current(&BTreeMap::new(), &ours).expect_err("missing").0.contains("missing"));
        let old = BTreeMap::from([("a.mesh.dev".to_string(), serde_json::json!([{"name": "v0"}]))]);
        assert!(crds_current(&old, &ours).expect_err("stale").0.contains("another version"));
    }
}
