//! Runtime pieces shared by every mesh binary: the admin HTTP server, the
//! shutdown signal, reconnect backoff, logging set-up and process metrics.
//!
//! Nothing here knows about proxies or registries; it is the plumbing both the
//! data plane and the control plane stand on.

pub mod admin;
pub mod backoff;
pub mod duration;
pub mod process;
pub mod shutdown;
pub mod trace;
