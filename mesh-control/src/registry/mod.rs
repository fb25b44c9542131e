//! Registry sources in the control plane: each reads its input into
//! `mesh_registry`'s model and writes it into the [`Store`](crate::store::Store)
//! through [`RegistrySink`](mesh_registry::sink::RegistrySink); everything
//! downstream (the discovery and policy APIs) reads only the store, so the file
//! registry (universal mode) and the Kubernetes registry share all serving code.

pub mod file;
mod heap;
pub mod kubernetes;
