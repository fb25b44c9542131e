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

pub mod admin;
pub mod app;
pub mod balance;
pub mod balancers;
pub mod config;
pub mod conn;
pub mod connect;
pub mod control;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod handshakes;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod io;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod policy;
pub mod register;
pub mod tcp;
pub mod telemetry;
pub mod tls;

pub use app::{Proxy, StartError};
pub use config::Config;
