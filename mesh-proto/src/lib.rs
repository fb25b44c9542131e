//! The mesh's gRPC API, shared by the control plane, the proxy and `meshctl`.
//!
//! Generated at build time from `proto/*.proto`; small conversions between the
//! wire types and `std` types live beside them.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// Service discovery: endpoints of a service as a stream of changes.
pub mod destination {
    tonic::include_proto!("mesh.destination.v1");
}

/// Workload certificates and the trust bundle.
pub mod identity {
    tonic::include_proto!("mesh.identity.v1");
}

/// Routing, resilience and authorization policy.
pub mod policy {
    tonic::include_proto!("mesh.policy.v1");
}

/// Proxies registering with the control plane (for `meshctl` to find them).
pub mod workloads {
    tonic::include_proto!("mesh.workloads.v1");
}

mod convert;
pub use convert::*;
