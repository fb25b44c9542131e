//! The control plane's `/proxies`: every proxy registered through the
//! Workloads API, for `meshctl stat`, `top`, `tap` and `edges` to find their
//! admin ports.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The `/proxies` document: `{"proxies": [...]}`, sorted by workload then
/// admin address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyListing {
    /// The registered proxies.
    pub proxies: Vec<RegisteredProxy>,
}

/// One registered proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredProxy {
    /// The workload's name.
    #[serde(default)]
    pub workload: String,
    /// Its SPIFFE identity, if any.
    #[serde(default)]
    pub identity: Option<String>,
    /// The proxy's admin address (an unspecified IP replaced by the
    /// registration's peer address).
    pub admin_addr: SocketAddr,
    /// The proxy's inbound address, if it has one.
    #[serde(default)]
    pub inbound_addr: Option<SocketAddr>,
    /// The proxy's version.
    #[serde(default)]
    pub version: String,
    /// Where the registration came from, when known.
    #[serde(default)]
    pub remote_addr: Option<SocketAddr>,
    /// When it registered (Unix seconds).
    #[serde(default)]
    pub since_unix: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_round_trips_with_stable_field_names() {
        let p = RegisteredProxy {
            workload: "books-0".into(),
            identity: None,
            admin_addr: "127.0.0.1:4191".parse().expect("addr"),
            inbound_addr: Some("127.0.0.1:4143".parse().expect("addr")),
            version: "0.1.0".into(),
            remote_addr: None,
            since_unix: 7,
        };
        let doc = serde_json::to_value(ProxyListing { proxies: vec![p.clone()] }).expect("serializes");
        assert_eq!(doc["proxies"][0]["admin_addr"], "127.0.0.1:4191");
        assert_eq!(doc["proxies"][0]["identity"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<ProxyListing>(doc).expect("parses").proxies, [p]);
        let minimal: RegisteredProxy =
            serde_json::from_str(r#"{"admin_addr":"[::1]:1","extra":true}"#).expect("lenient");
        assert_eq!((minimal.workload.as_str(), minimal.admin_addr.port()), ("", 1));
    }
}
