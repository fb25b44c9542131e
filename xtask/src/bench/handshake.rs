//! The `handshake` scenario: new connections through an opaque TCP service,
//! each one a new proxy-to-proxy connection (and handshake).

use super::loadgen::Mode;
use super::measure::{Bench, Driver, Table};
use super::report::{Section, Unit, Variant};

impl Bench<'_> {
    /// New connections through an opaque TCP service.
    pub fn handshake(&self, meshes: &[Variant]) -> anyhow::Result<Section> {
        let app = self.nginx.http1;
        let started = meshes
            .iter()
            .map(|&v| Ok((v, self.mesh("tcp", v, app, "opaque", None)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut notes = vec![
            "each connection sends one HTTP/1.0 request with `Connection: close` to nginx and reads to EOF; \
             through the mesh the service is opaque TCP, so every client connection opens its own \
             proxy-to-proxy connection (proxy conns/connection ≈ 1.00), unlike the pooled http scenario"
                .to_string(),
            format!(
                "connection time runs from connect to EOF. The client is a single-threaded tokio loop in xtask \
                 ({} workers at max rate) on the same CPUs: at max rate the baseline is mostly the client's limit",
                self.args.connections
            ),
        ];
        if meshes.contains(&Variant::MTLS) {
            notes.push(
                "TLS session resumption (tickets) applies between the same two proxies: after the first, the \
                 mTLS handshakes here are mostly resumptions, which skip certificates and signatures but still do \
                 a TLS 1.3 key exchange; a full handshake with a new peer costs more"
                    .into(),
            );
        }
        let variants: Vec<&str> = std::iter::once("baseline").chain(meshes.iter().map(|v| v.label())).collect();
        let table = Table {
            key: "handshake".into(),
            title: format!("New connections, opaque TCP: {}", variants.join(" vs ")),
            unit: Unit::Connection,
            driver: Driver::Conns,
            modes: vec![Mode::Fixed(self.args.conn_rate), Mode::Max],
            targets: Self::targets(app, &started),
            meshes: started.into_iter().map(|(_, m)| m).collect(),
            peers: Vec::new(),
            collector: None,
            notes,
            pods: None,
        };
        self.measure(table)
    }
}
