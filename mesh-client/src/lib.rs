//! Talking to the control plane.
//!
//! - [`channel`]: the one HTTP/2 channel a process keeps to the control
//!   plane, secured with the mesh's own TLS verification when it has an
//!   identity.
//! - [`watch`]: the one reconnecting watch every long-lived stream uses
//!   (discovery, policy, registration, the trust bundle): a server stream
//!   followed into a latest state that survives disconnections, with
//!   jittered backoff, where each new stream's snapshot replaces what was
//!   kept.

mod channel;
pub mod watch;

pub use channel::channel;
pub use watch::{Connection, Source, Watch};
