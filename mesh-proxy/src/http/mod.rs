//! HTTP proxying: serving clients, forwarding to endpoints, and what sits
//! between (header hygiene, upgrades, metrics, proxy-generated errors).

pub mod authorize;
pub mod errors;
pub mod observe;
pub mod proxy;
pub mod replay;
pub mod route;
pub mod server;
pub mod upgrade;
