//! `mesh-control`: the control plane.
//!
//! It tells proxies who exists (the Destination API) and how to route to them
//! and whom to admit (the Policy API) from a registry: a YAML file in
//! universal mode, Kubernetes objects in a cluster; and it is the mesh's
//! certificate authority (the Identity API). The library starts
//! in-process with its configuration given as a value, so tests run many
//! instances side by side; the `mesh-control` binary is a thin CLI over it.

mod admin;
pub mod config;
mod destination;
pub mod identity;
mod metrics;
mod policy;
mod registry;
mod router;
mod server;
mod store;
pub mod tls;
pub mod webhook;
mod workloads;

pub use config::{Config, IdentityConfig, RegistryConfig, Timeouts, WebhookConfig};
pub use server::{Control, StartError};
