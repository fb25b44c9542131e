//! `mesh-proxy`: the sidecar data plane.
//!
//! One proxy runs beside each workload. Outbound, it takes the app's
//! connections to mesh services, detects HTTP/1, HTTP/2 (gRPC) or opaque TCP,
//! resolves the target through the control plane and balances requests over
//! the endpoints. Inbound, it takes peers' connections and forwards them to
//! the app. The library starts with its configuration as a value; the
//! `mesh-proxy` binary is a thin CLI over it.
//!
//! Layout, following the path of a connection:
//! [`conn`] (accept, meter, [`detect`]) → [`http`] (serve, [`http::proxy`]
//! forward) or [`tcp`] → [`balance`] (pick an endpoint, kept current by
//! [`discovery`]) → [`connect`].

mod admin;
mod app;
pub mod app_probe;
mod balance;
mod balancers;
mod body;
pub mod config;
mod conn;
mod connect;
mod detect;
mod discovery;
mod drain;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod identity;
mod inbound;
pub mod init;
mod io;
mod metrics;
mod orig_dst;
mod outbound;
mod policy;
mod pool;
mod probe;
mod register;
mod tcp;
pub mod telemetry;
mod tls;

pub use app::{Proxy, StartError};
pub use config::Config;
