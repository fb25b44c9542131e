//! The Policy API: outbound policy per target (routes, backends, timeouts,
//! retries, faults, rate limits, circuit breaking) and inbound policy per
//! workload port (authorizations), streamed to proxies from the store.
//! Translation is pure and lives in `mesh_registry::translate`, so the same
//! answers are available offline from a registry file.

mod service;

pub use service::{PolicyMetrics, PolicyService};
