//! The harness for the mesh's end-to-end suites.
//!
//! Everything here is real: the control plane and proxies are the library
//! code the binaries run (or the binaries themselves, see [`bins`]), the
//! apps are real HTTP/gRPC/TCP servers on loopback, and clients are hyper,
//! tonic, or `curl`.

#![allow(clippy::unwrap_used, missing_debug_implementations)]

pub mod apps;
pub mod bins;
pub mod flow;
pub mod garbage;
pub mod grpc;
pub mod image;
pub mod kube_harness;
pub mod kube_hold;
pub mod load;
pub mod mesh;
pub mod netns;
pub mod node;
pub mod otlp;
pub mod pcap;
pub mod real;
pub mod relay;
pub mod stream_load;
pub mod swarm;

/// Generated test gRPC service.
pub mod pb {
    tonic::include_proto!("mesh.test.v1");
}

/// Installs a log subscriber once (`MESH_LOG=debug` for detail).
pub fn init_logs() {
    mesh_core::trace::init("MESH_LOG", "warn");
}
