//! `mesh-control`: the control plane.
//!
//! It tells proxies who exists (the Destination API) and how to route to them
//! and whom to admit (the Policy API) from a registry: a YAML file in
//! universal mode, Kubernetes objects in a cluster; and it is the mesh's
//! certificate authority (the Identity API). The library starts
//! in-process with its configuration given as a value, so tests run many
//! instances side by side; the `mesh-control` binary is a thin CLI over it.

pub mod admin;
pub mod config;
pub mod destination;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod router;
pub mod server;
pub mod store;
pub mod tls;
pub mod workloads;

pub use config::{Config, IdentityConfig, RegistryConfig};
pub use server::{Control, StartError};
