//! JSON types that cross process boundaries outside gRPC: what a proxy's
//! `/tap` streams and what the control plane's `/proxies` lists. The
//! producer serializes these very types and `meshctl` reads them back, so the
//! two sides cannot drift apart.
//!
//! Readers are lenient: every field has a default and unknown fields are
//! ignored, so an older `meshctl` reads a newer proxy's events.

mod proxies;
mod tap;

pub use proxies::{ProxyListing, RegisteredProxy};
pub use tap::{TapEvent, succeeded};
