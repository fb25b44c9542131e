//! The Kubernetes registry: Services and EndpointSlices watched with
//! kube-runtime reflectors, converted by pure functions ([`service`]) into
//! `mesh_registry`'s model and written through
//! [`RegistrySink`](mesh_registry::sink::RegistrySink).

pub mod policy;
mod report;
pub mod routes;
pub mod service;
pub mod status;
mod status_writer;
pub mod watch;

pub use service::service_from;
pub use watch::{KubernetesRegistry, RegistryStats};
