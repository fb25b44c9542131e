//! Traffic policy: what the control plane says about routing, resilience and
//! authorization, compiled for the data path.
//!
//! Evaluation is pure ([`outbound::OutboundPolicy::route`],
//! [`inbound::InboundPolicy::authorize`]), so `meshctl policy explain` runs
//! the very code the proxy runs.

pub mod budget;
pub(crate) mod client;
pub mod inbound;
pub mod matcher;
pub mod outbound;
pub mod ratelimit;
