//! The `http` scenario: HTTP requests on pooled connections, per protocol:
//! latency at fixed rates, throughput at max rate, CPU and memory, for the
//! mesh and the reference proxies (Envoy's pair, nginx and HAProxy one-hop).

use super::loadgen::{Proto, Tools};
use super::measure::{Bench, Driver, Table};
use super::peers::Peer;
use super::pods::Pods;
use super::report::{Section, Unit, Variant};
use super::topology::MeshSpec;
use anyhow::Context;

/// The registry's protocol for `proto`'s service.
fn hint(proto: Proto) -> &'static str {
    match proto {
        Proto::Http1 => "http",
        Proto::Http2 => "http2",
        Proto::Grpc | Proto::GrpcStream => "grpc",
    }
}

impl Bench<'_> {
    /// HTTP requests on pooled connections, baseline against `meshes` and the peers.
    pub fn http(&self, tools: &Tools, proto: Proto, meshes: &[Variant]) -> anyhow::Result<Section> {
        let hint = hint(proto);
        let app = self.app(proto)?;
        let started = meshes
            .iter()
            .map(|&v| Ok((v, self.mesh(proto.key(), v, app, hint, None)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // gRPC: only the pairs (Envoy's, the reference, and the floor) beside the mesh.
        let peers = self
            .peers
            .peers()
            .into_iter()
            .filter(|p| !proto.is_grpc() || p.proxies() == 2)
            .map(|p| Ok((p, self.peers.start(p, proto, app, &self.nginx, self.dir)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let variants: Vec<&str> = std::iter::once("baseline")
            .chain(meshes.iter().map(|v| v.label()))
            .chain(peers.iter().map(|(p, _)| p.label()))
            .collect();
        let mut targets = Self::targets(app, &started);
        targets.extend(Self::peer_targets(&peers));
        let table = Table {
            key: proto.key().into(),
            title: format!("{} on loopback: {}", proto.label(), variants.join(" vs ")),
            unit: if proto == Proto::GrpcStream { Unit::Message } else { Unit::Request },
            driver: Driver::Http(tools, proto),
            modes: self.args.modes(),
            targets,
            meshes: started.into_iter().map(|(_, m)| m).collect(),
            notes: peer_notes(proto, &peers.iter().map(|(p, _)| *p).collect::<Vec<_>>()),
            peers: peers.into_iter().map(|(_, r)| r).collect(),
            collector: None,
            pods: None,
        };
        self.measure(table)
    }

    /// The same in the pods topology ([`super::pods`]): the direct path
    /// (client pod → server pod, no rules) against `meshes` intercepting
    /// transparently. No reference proxy is measured there yet.
    pub fn http_pods(
        &self,
        tools: &Tools,
        proto: Proto,
        meshes: &[Variant],
        nginx: &std::path::Path,
    ) -> anyhow::Result<Section> {
        eprintln!("==> {} in pods: making the network namespaces and starting the server pod's apps", proto.key());
        let pods = Pods::start(nginx, &self.bins, proto.is_grpc(), self.dir).context("cannot set up the pods")?;
        let target = Pods::target(proto);
        let mut started = Vec::new();
        for (i, &v) in meshes.iter().enumerate() {
            let Variant::Mesh { tls, tracing: false } = v else {
                anyhow::bail!("the pods topology measures meshes without tracing")
            };
            let identity = match (tls, &self.identity) {
                (true, Some(id)) => Some(id),
                (true, None) => anyhow::bail!("an mTLS mesh needs the identity directory"),
                (false, _) => None,
            };
            let spec = MeshSpec {
                name: format!("pods-{}-{}", proto.key(), v.key()),
                app: target,
                protocol: hint(proto),
                identity,
                trace_collector: None,
                threads: self.args.proxy_threads,
                extra_args: &self.args.proxy_args,
            };
            eprintln!(
                "==> {} in pods: starting a mesh, {}: mesh-control and a transparent proxy per pod",
                proto.key(),
                v.label()
            );
            let mesh = pods
                .mesh(&self.bins, &spec, i, target)
                .with_context(|| format!("cannot start the {} in the pods", v.label()))?;
            started.push((v, mesh));
        }
        let mut peers = Vec::new();
        if let (Some(bin), Some(certs)) = (&self.peers.envoy, &self.peers.certs) {
            eprintln!("==> {} in pods: starting the Envoy mTLS pair, Istio-style", proto.key());
            let pair =
                pods.envoy_pair(bin, certs, proto, target.port()).context("cannot start Envoy's pair in the pods")?;
            peers.push((Peer::Envoy, pair));
        }
        let variants: Vec<&str> = std::iter::once("baseline (direct)")
            .chain(meshes.iter().map(|v| v.label()))
            .chain(peers.iter().map(|(p, _)| p.label()))
            .collect();
        let names = pods.names();
        let notes = vec![
            format!(
                "pods: client pod {} → server pod {} ({target}): network namespaces, each with a veth to a bridge \
                 in node namespace {}, where the control plane runs; baseline: direct, no iptables rules; meshes: \
                 `mesh-proxy init` as the injector runs it in both pods before each of their runs (removed with \
                 `init --cleanup` for the direct path), proxies transparent as UID 2102; every mesh run is checked \
                 to have gone through both proxies (their request counters)",
                names.client, names.server, names.node
            ),
            if peers.is_empty() {
                "pods: Envoy's pair not measured (not found); the one-hop references are not measured in pods"
                    .to_string()
            } else {
                format!(
                    "pods: Envoy mTLS pair Istio-style: each Envoy as UID 1337 (exempt), the pod's other TCP redirected \
                     (nat REDIRECT) outbound to the client Envoy's {} (original_dst listener filter, ORIGINAL_DST \
                     cluster, mTLS) and inbound to the server Envoy's {} (mTLS, then the app on loopback), \
                     --concurrency 1 each; its runs checked to have gone through both Envoys (their completed \
                     requests); the one-hop references are not measured in pods",
                    super::pods::envoy::OUTBOUND_PORT,
                    super::pods::envoy::INBOUND_PORT
                )
            },
        ];
        let table = Table {
            key: format!("pods_{}", proto.key()),
            title: format!("{} in pods (netns, transparent): {}", proto.label(), variants.join(" vs ")),
            unit: Unit::Request,
            driver: Driver::Http(tools, proto),
            modes: self.args.modes(),
            targets: Self::targets(target, &started).into_iter().chain(Self::peer_targets(&peers)).collect(),
            meshes: started.into_iter().map(|(_, m)| m).collect(),
            notes,
            peers: peers.into_iter().map(|(_, r)| r).collect(),
            collector: None,
            pods: Some(pods),
        };
        self.measure(table)
    }
}

/// What the table's reference columns are, for its notes.
fn peer_notes(proto: Proto, peers: &[Peer]) -> Vec<String> {
    let mut notes = Vec::new();
    if peers.contains(&Peer::Envoy) {
        notes.push(
            "Envoy mTLS pair: client Envoy → mTLS (certificates from the mesh's CA, SPIFFE IDs checked) → server \
             Envoy → nginx, --concurrency 1 each; CPU per process, RSS per Envoy"
                .to_string(),
        );
    }
    if peers.iter().any(|p| matches!(p, Peer::FloorTcp | Peer::FloorTls)) {
        notes.push(
            "floor: two `mesh-test-app relay`s (one thread each, bytes copied per connection, no HTTP parsing), \
             plaintext or TLS 1.3 between them (the mesh's TLS setup, the Envoy pair's certificates, SPIFFE IDs \
             checked): what any two-process relay pair costs here; ours minus floor (TLS) is what is ours to cut"
                .to_string(),
        );
    }
    if peers.iter().any(|p| p.proxies() == 1) {
        let upstream = match proto {
            Proto::Http1 => "HTTP/1.1",
            Proto::Http2 => "h2c (nginx one-hop: HTTP/1.1, nginx proxies in HTTP/1.x only)",
            Proto::Grpc | Proto::GrpcStream => "h2c",
        };
        notes.push(format!(
            "one-hop references (plaintext, one worker, keep-alive upstream in {upstream}): their single proxy \
             (its whole process tree) is counted as the client proxy"
        ));
    }
    notes
}
