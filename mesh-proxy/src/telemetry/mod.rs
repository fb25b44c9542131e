//! Telemetry beyond metrics: distributed tracing (propagation and OTLP
//! export), access logs and tap. All optional; each costs nothing when off.

pub mod access_log;
pub mod propagation;
pub mod tap;
pub mod trace;

/// The proxy's telemetry sinks, shared by every connection.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// This workload's name.
    pub workload: String,
    /// Span export, when a collector is configured.
    pub tracer: Option<trace::Exporter>,
    /// Access log, when enabled.
    pub access_log: Option<access_log::AccessLog>,
    /// Live request taps.
    pub tap: tap::Tap,
}
