//! The mesh's gRPC API, shared by the control plane, the proxy and `meshctl`.
//!
//! Generated at build time from `proto/*.proto`; small conversions between the
//! wire types and `std` types live beside them. [`wire`] holds the JSON types
//! that cross process boundaries outside gRPC (tap events, the proxy listing).

/// Service discovery: endpoints of a service as a stream of changes.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod destination {
    tonic::include_proto!("mesh.destination.v1");
}

/// Workload certificates and the trust bundle.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod identity {
    tonic::include_proto!("mesh.identity.v1");
}

/// Routing, resilience and authorization policy.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod policy {
    tonic::include_proto!("mesh.policy.v1");
}

/// Proxies registering with the control plane (for `meshctl` to find them).
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod workloads {
    tonic::include_proto!("mesh.workloads.v1");
}

mod convert;
pub mod wire;

pub use convert::*;
