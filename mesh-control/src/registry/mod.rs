//! Registries: where services, endpoints and policies come from.
//!
//! A registry runs as a task that writes into the [`Store`](crate::store::Store);
//! everything downstream (the discovery and policy APIs) reads only the store,
//! so the file registry (universal mode) and the Kubernetes registry share all
//! serving code.

pub mod file;
pub mod model;
pub mod policy;
