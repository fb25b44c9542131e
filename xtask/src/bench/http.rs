//! The `http` scenario: HTTP requests on pooled connections, per protocol:
//! latency at a fixed rate, throughput at max rate, CPU and memory.

use super::loadgen::{Mode, Proto, Tools};
use super::measure::{Bench, Driver, Table};
use super::report::{Section, Unit, Variant};

impl Bench<'_> {
    /// HTTP requests on pooled connections, baseline against `meshes`.
    pub fn http(&self, tools: &Tools, proto: Proto, meshes: &[Variant]) -> anyhow::Result<Section> {
        let hint = match proto {
            Proto::Http1 => "http",
            Proto::Http2 => "http2",
        };
        let app = self.nginx.addr(proto);
        let started = meshes
            .iter()
            .map(|&v| Ok((v, self.mesh(proto.key(), v, app, hint, None)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let variants: Vec<&str> = std::iter::once("baseline").chain(meshes.iter().map(|v| v.label())).collect();
        let table = Table {
            key: proto.key().into(),
            title: format!("{}: {}", proto.label(), variants.join(" vs ")),
            unit: Unit::Request,
            driver: Driver::Http(tools, proto),
            modes: [Mode::Fixed(self.args.rate), Mode::Max],
            targets: Self::targets(app, &started),
            meshes: started.into_iter().map(|(_, m)| m).collect(),
            collector: None,
            notes: Vec::new(),
        };
        self.measure(table)
    }
}
