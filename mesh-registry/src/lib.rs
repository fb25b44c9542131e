//! `mesh-registry`: what the mesh knows about services, whatever it comes from.
//!
//! - [`model`]: services, ports, endpoints (and the policy model from
//!   `mesh-policy`), as every source produces them;
//! - [`file`]: the YAML source (universal mode): the model, or every problem
//!   located by line and column;
//! - [`problem`]: problems located in a source's own terms (text position,
//!   or API object and field path);
//! - [`sink`]: the one trait a source writes through (the control plane's
//!   store implements it);
//! - [`target`], [`index`]: what proxies ask for and the read-only index
//!   that answers;
//! - [`translate`]: the policy model to the Policy API, as pure functions of
//!   an index (the control plane serves it, `meshctl policy explain` runs it).

pub mod file;
pub mod index;
pub mod model;
pub mod problem;
pub mod sink;
pub mod target;
pub mod translate;
