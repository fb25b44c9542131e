//! The `http` scenario: HTTP requests on pooled connections, per protocol:
//! latency at fixed rates, throughput at max rate, CPU and memory, for the
//! mesh and the reference proxies (Envoy's pair, nginx and HAProxy one-hop).

use super::loadgen::{Proto, Tools};
use super::measure::{Bench, Driver, Table};
use super::peers::Peer;
use super::report::{Section, Unit, Variant};

impl Bench<'_> {
    /// HTTP requests on pooled connections, baseline against `meshes` and the peers.
    pub fn http(&self, tools: &Tools, proto: Proto, meshes: &[Variant]) -> anyhow::Result<Section> {
        let hint = match proto {
            Proto::Http1 => "http",
            Proto::Http2 => "http2",
            Proto::Grpc => "grpc",
        };
        let app = self.app(proto)?;
        let started = meshes
            .iter()
            .map(|&v| Ok((v, self.mesh(proto.key(), v, app, hint, None)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // gRPC: only Envoy's pair (the reference) beside the mesh.
        let peers = self
            .peers
            .peers()
            .into_iter()
            .filter(|p| proto != Proto::Grpc || *p == Peer::Envoy)
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
            title: format!("{}: {}", proto.label(), variants.join(" vs ")),
            unit: Unit::Request,
            driver: Driver::Http(tools, proto),
            modes: self.args.modes(),
            targets,
            meshes: started.into_iter().map(|(_, m)| m).collect(),
            notes: peer_notes(proto, &peers.iter().map(|(p, _)| *p).collect::<Vec<_>>()),
            peers: peers.into_iter().map(|(_, r)| r).collect(),
            collector: None,
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
    if peers.iter().any(|p| p.proxies() == 1) {
        let upstream = match proto {
            Proto::Http1 => "HTTP/1.1",
            Proto::Http2 => "h2c (nginx one-hop: HTTP/1.1, nginx proxies in HTTP/1.x only)",
            Proto::Grpc => "h2c",
        };
        notes.push(format!(
            "one-hop references (plaintext, one worker, keep-alive upstream in {upstream}): their single proxy \
             (its whole process tree) is counted as the client proxy"
        ));
    }
    notes
}
