//! Header hygiene for proxying: hop-by-hop headers belong to one connection
//! and must not be forwarded (RFC 9110 §7.6.1).

use http::HeaderMap;
use http::header::{self, HeaderName};

/// How many names [`HOP_BY_HOP`] holds.
const HOPS: usize = 5;
/// Headers that always describe only the current connection.
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
/// `Upgrade` (and `Connection: upgrade`) survive when `upgrading`, since the
/// proxy forwards the upgrade handshake itself. `TE: trailers` survives, as
/// gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // One pass over the names (cheap comparisons) finds which are present:
    // most messages carry none, and most others only `Connection:
    // keep-alive` (every HTTP/1.1 response from nginx), so only the names
    // present cost a hashed lookup below.
    let (mut present, mut upgrade) = ([false; HOPS], false);
    for n in headers.keys() {
        if n == header::UPGRADE {
            upgrade = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == n) {
            present[i] = true;
        }
    }
    if !upgrading && !upgrade && !present.contains(&true) {
        return;
    }
    let here = |name: &HeaderName| HOP_BY_HOP.iter().position(|h| h == name).is_some_and(|i| present[i]);
    let (connection, te) = (here(&header::CONNECTION), here(&header::TE));
    let named: Vec<HeaderName> = if !connection {
        Vec::new()
    } else {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // Names handled below anyway (`Connection: keep-alive` on most
            // HTTP/1 responses) are not collected: no allocation for them.
            .filter(|n| {
                !n.eq_ignore_ascii_case("upgrade") && !HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(n))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect()
    };
    let te_trailers = te
        && headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    for name in named {
        headers.remove(name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
    if upgrading {
        headers.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, header::HeaderValue::from_static("trailers"));
    }
}

/// Whether an HTTP/1 request asks to switch protocols (WebSocket and friends).
pub fn wants_upgrade<B>(req: &http::Request<B>) -> bool {
    req.version() <= http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether a request is gRPC (errors are then answered in gRPC's own terms).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn strips_listed_and_standard_hop_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("x-app", "kept"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-app"]);
    }

    /// Catches a fast path (nothing hop-by-hop here: leave the map alone)
    /// that overlooks one of the names: each alone must still be stripped.
    #[test]
    fn each_hop_by_hop_name_alone_is_stripped() {
        for name in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"] {
            let mut h = map(&[(name, "x"), ("x-app", "kept")]);
            strip_hop_by_hop(&mut h, false);
            let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-app"], "{name} alone");
        }
        let mut plain = map(&[("host", "a"), ("x-app", "kept"), ("x-app", "twice")]);
        let before = plain.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain, before, "nothing hop-by-hop: untouched");
    }

    #[test]
    fn keeps_te_trailers_and_upgrades() {
        let mut h = map(&[("te", "trailers, gzip"), ("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert_eq!(h.get("upgrade").map(|v| v.as_bytes()), Some(&b"websocket"[..]));
        assert_eq!(h.get("connection").map(|v| v.as_bytes()), Some(&b"upgrade"[..]));
    }

    #[test]
    fn detects_upgrades_and_grpc() {
        let mut req = http::Request::new(());
        req.headers_mut().insert("connection", HeaderValue::from_static("keep-alive, Upgrade"));
        req.headers_mut().insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&req));
        *req.version_mut() = http::Version::HTTP_2;
        assert!(!wants_upgrade(&req));
        assert!(is_grpc(&map(&[("content-type", "application/grpc+proto")])));
        assert!(!is_grpc(&map(&[("content-type", "text/html")])));
    }
}
