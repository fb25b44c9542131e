//! Completed mTLS handshakes between proxies, counted by direction, whether
//! the session was resumed and the negotiated key exchange group:
//! `tls_handshakes_total{direction, resumed, group}`. This is how operators
//! (and the process tests) see from outside that peers agreed on the hybrid
//! post-quantum group (`X25519MLKEM768`) and how often resumption saves a
//! full handshake.
//!
//! The inbound accept (`conn.rs`) and the outbound connector (`connect.rs`)
//! each call [`Handshakes::record`] once a handshake has completed, and
//! [`Handshakes::refused`] when a resumed session was refused after it
//! (`resumed="refused"`; inbound, also `tcp_refused_total{reason="tls_resumption"}`).

use super::Direction;
use mesh_identity::tls::Handshake;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of `tls_handshakes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// inbound (this proxy accepted) or outbound (this proxy dialled).
    pub direction: Direction,
    /// `true` when the session was resumed (a ticket), `false` for a full
    /// handshake, `refused` for a resumed session refused after the handshake
    /// because the peer's certificate from the ticket no longer verifies
    /// (expired, or no longer under a trusted anchor).
    pub resumed: String,
    /// The negotiated key exchange group (`X25519MLKEM768`, `X25519`...),
    /// empty when none was negotiated.
    pub group: String,
}

impl HandshakeLabels {
    /// The labels of a completed handshake.
    pub fn of(direction: Direction, handshake: &Handshake) -> Self {
        // A bounded set: the groups this proxy's crypto provider supports.
        Self { direction, resumed: handshake.resumed.to_string(), group: handshake.group.clone().unwrap_or_default() }
    }
}

/// The handshake counter family.
#[derive(Debug, Clone, Default)]
pub struct Handshakes(Family<HandshakeLabels, Counter>);

impl Handshakes {
    /// Registers `tls_handshakes_total`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "tls_handshakes",
            "Completed mTLS handshakes with peers, by direction, resumption and key exchange group",
            self.0.clone(),
        );
    }

    /// Counts a completed handshake on `conn`.
    pub fn record(&self, direction: Direction, handshake: &Handshake) {
        let labels = HandshakeLabels::of(direction, handshake);
        tracing::debug!(?direction, resumed = %labels.resumed, group = %labels.group, "mTLS handshake completed");
        self.0.get_or_create(&labels).inc();
    }

    /// Counts a resumed session refused because the peer's certificate from
    /// the ticket no longer verifies.
    pub fn refused(&self, direction: Direction) {
        let labels = HandshakeLabels { direction, resumed: "refused".into(), group: String::new() };
        self.0.get_or_create(&labels).inc();
    }
}
