//! `mesh-policy`: what the mesh's policies mean, written once.
//!
//! - [`model`]: routes, traffic policies and authorizations as registries
//!   produce them (the control plane validates and serves these);
//! - [`rules`] and [`cidr`]: the primitive semantics (segment prefixes,
//!   anchored regexes, hosts, networks) everything else is built on;
//! - [`check`]: cross-rule checks the control plane runs before serving a
//!   policy (rules an earlier rule shadows, policies that select the same port);
//! - [`matcher`], [`outbound`], [`inbound`]: the Policy API compiled for the
//!   data path and evaluated by pure functions — the proxy runs them per
//!   request and `meshctl policy explain` runs the very same code;
//! - [`budget`], [`ratelimit`]: the retry budget and token bucket those
//!   compiled policies carry;
//! - [`headers`]: the request as policy sees it (hop-by-hop headers gone,
//!   upgrades and gRPC recognised), shared by the proxy and `explain`.

pub mod budget;
pub mod check;
pub mod cidr;
pub mod headers;
pub mod inbound;
pub mod matcher;
pub mod model;
pub mod outbound;
pub mod ratelimit;
pub mod rules;

#[cfg(test)]
mod cases;
