//! Tap events: one JSON line per observed request on a proxy's `/tap`.

use serde::{Deserialize, Serialize};

/// One observed request, as a proxy's `/tap` streams it (one JSON object per
/// line) and `meshctl tap`/`top` read it back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TapEvent {
    /// Unix milliseconds when the request arrived.
    pub ts_ms: u64,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The workload this proxy serves.
    pub workload: String,
    /// The target.
    pub target: String,
    /// The peer's identity, if mTLS.
    pub peer_id: String,
    /// Method.
    pub method: String,
    /// Authority.
    pub authority: String,
    /// Path.
    pub path: String,
    /// HTTP status.
    pub status: u16,
    /// gRPC status, if any.
    pub grpc_status: Option<u32>,
    /// Latency to response headers, milliseconds.
    pub latency_ms: f64,
    /// Whether mTLS carried it.
    pub tls: bool,
}

impl TapEvent {
    /// Whether the proxy counted it a success (see [`succeeded`]).
    pub fn success(&self) -> bool {
        succeeded(self.status, self.grpc_status)
    }
}

/// The mesh's success classification, shared by the proxy's metrics and
/// every reader of tap events: 5xx fail; for gRPC, the codes that mean the
/// server or the network failed (UNKNOWN, DEADLINE_EXCEEDED,
/// RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS) fail.
pub fn succeeded(http_status: u16, grpc_status: Option<u32>) -> bool {
    http_status < 500 && !matches!(grpc_status, Some(2 | 4 | 8 | 12 | 13 | 14 | 15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(succeeded(200, None));
        assert!(succeeded(404, None));
        assert!(!succeeded(503, None));
        assert!(succeeded(200, Some(0)));
        assert!(succeeded(200, Some(5)), "NOT_FOUND is the caller's problem");
        assert!(!succeeded(200, Some(14)));
    }

    #[test]
    fn events_round_trip_and_parse_leniently() {
        let e = TapEvent {
            ts_ms: 1,
            direction: "inbound".into(),
            status: 200,
            grpc_status: Some(0),
            ..TapEvent::default()
        };
        let line = serde_json::to_string(&e).expect("serializes");
        assert_eq!(serde_json::from_str::<TapEvent>(&line).expect("parses"), e);
        let old: TapEvent =
            serde_json::from_str(r#"{"ts_ms":1,"workload":"web-0","status":503,"new_field":1}"#).expect("lenient");
        assert_eq!((old.workload.as_str(), old.status, old.tls), ("web-0", 503, false));
        assert!(!old.success());
    }
}
