//! The `tracing` scenario: the mesh with and without span export to an
//! OTLP receiver (`mesh-test-app otlp-sink`, a child process), per protocol.

use super::loadgen::{Proto, Tools};
use super::measure::{Bench, Driver, Table};
use super::otlp::Collector;
use super::report::{Section, Unit, Variant};

impl Bench<'_> {
    /// `mesh` with and without span export.
    pub fn tracing(
        &self,
        tools: &Tools,
        proto: Proto,
        mesh: Variant,
        collector: &Collector,
    ) -> anyhow::Result<Section> {
        let hint = match proto {
            Proto::Http1 => "http",
            Proto::Http2 => "http2",
            Proto::Grpc | Proto::GrpcStream => "grpc",
        };
        let app = self.nginx.addr(proto);
        let tag = format!("tracing-{}", proto.key());
        let started = [mesh, mesh.traced()]
            .into_iter()
            .map(|v| Ok((v, self.mesh(&tag, v, app, hint, Some(collector))?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let table = Table {
            key: format!("tracing_{}", proto.key()),
            title: format!(
                "Tracing, {}: baseline vs {} vs {} (every trace sampled, OTLP/gRPC export)",
                proto.label(),
                mesh.label(),
                mesh.traced().label()
            ),
            unit: Unit::Request,
            driver: Driver::Http(tools, proto),
            modes: self.args.modes(),
            targets: Self::targets(app, &started),
            meshes: started.into_iter().map(|(_, m)| m).collect(),
            peers: Vec::new(),
            collector: Some(collector),
            notes: vec![
                "spans go to an OTLP/gRPC receiver (mesh-test-app otlp-sink) that counts and discards them; each request should \
                 give 2 (one per proxy). Proxies queue at most 4096 spans and drop the rest (counted): at max rate \
                 \"spans dropped\" shows whether export kept up. The receiver shares the machine's CPUs, so at max \
                 rate its work also lowers the traced mesh's throughput; CPU/request at the fixed rate is the \
                 proxies' own cost"
                    .into(),
            ],
            pods: None,
        };
        self.measure(table)
    }
}
