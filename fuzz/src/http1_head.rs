//! The proxy's HTTP/1 request-head handling: the bytes a client sends on a
//! connection go through the proxy's own HTTP/1 server (hyper with the
//! proxy's header limits and timeouts), and every head it accepts through
//! what the proxy does to a request before forwarding it (hop-by-hop header
//! hygiene, upgrade and gRPC recognition), trace-context propagation, host
//! normalisation, route matching and inbound authorization.

use http::HeaderMap;
use http::header::{self, HeaderName};
use mesh_policy::inbound::{Client, InboundPolicy};
use mesh_policy::matcher::request_host;
use mesh_policy::outbound::OutboundPolicy;
use mesh_proto::policy as pb;
use mesh_proxy::fuzzing::{Head, http1_heads};
use mesh_proxy::telemetry::propagation::{self, Format, SpanContext};
use std::sync::OnceLock;

/// Runs one input: the bytes of one client connection.
pub fn run(data: &[u8]) {
    let (outbound, inbound) = policies();
    for head in http1_heads(data) {
        check_hygiene(&head);
        check_propagation(&head.forwarded.headers);
        if let Some(host) = request_host(&head.forwarded.uri, &head.forwarded.headers) {
            assert_eq!(host, host.to_ascii_lowercase(), "hosts compare lowercased");
        }
        let route = outbound.route(&head.forwarded);
        assert!(route.is_some(), "the catch-all route takes every request");
        for identity in [None, Some("spiffe://fuzz.local/ns/default/sa/web".to_string())] {
            let client = Client { identity, ip: [10, 1, 2, 3].into() };
            let _ = inbound.authorize(&client, Some(&head.forwarded));
        }
    }
}

/// Hop-by-hop headers are gone (RFC 9110 §7.6.1), everything else is kept.
fn check_hygiene(head: &Head) {
    let (before, after) = (&head.received, &head.forwarded);
    assert_eq!((&before.method, &before.uri, before.version), (&after.method, &after.uri, after.version));
    for name in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        assert!(!after.headers.contains_key(name), "{name} forwarded");
    }
    if head.upgrading {
        assert_eq!(after.headers.get(header::CONNECTION).map(|v| v.as_bytes()), Some(&b"upgrade"[..]));
        assert!(after.headers.contains_key(header::UPGRADE), "an upgrade without its Upgrade header");
    } else {
        assert!(!after.headers.contains_key(header::CONNECTION), "Connection forwarded");
        assert!(!after.headers.contains_key(header::UPGRADE), "Upgrade forwarded without an upgrade");
    }
    if let Some(te) = after.headers.get(header::TE) {
        assert_eq!(te.as_bytes(), b"trailers", "TE other than trailers forwarded");
    }
    let named: Vec<HeaderName> = before
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let hop = |n: &HeaderName| {
        named.contains(n)
            || [header::CONNECTION, header::UPGRADE, header::TE, header::TRANSFER_ENCODING].contains(n)
            || ["keep-alive", "proxy-connection"].contains(&n.as_str())
    };
    for (name, value) in &before.headers {
        if !hop(name) {
            assert!(after.headers.get_all(name).iter().any(|v| v == value), "end-to-end header {name} dropped");
        } else if !(head.upgrading && name == header::UPGRADE) && name != header::TE && name != header::CONNECTION {
            assert!(!after.headers.contains_key(name), "hop-by-hop header {name} forwarded");
        }
    }
    assert_eq!(head.grpc, mesh_policy::headers::is_grpc(&before.headers));
}

/// What the proxy writes as its span's context reads back as written.
fn check_propagation(headers: &HeaderMap) {
    let mut h = headers.clone();
    let (format, parent) = match propagation::extract(&h) {
        Some((ctx, format)) => {
            assert!(ctx.trace_id != [0; 16] && ctx.span_id != [0; 8], "an all-zero id accepted");
            (format, Some(ctx.span_id))
        }
        None => (Format::W3c, None),
    };
    let me = SpanContext { trace_id: [0xab; 16], span_id: [0xcd; 8], sampled: true };
    propagation::inject(&mut h, &me, parent, format);
    assert_eq!(propagation::extract(&h), Some((me, format)), "the injected context does not read back");
}

/// A route table and an authorization policy using every kind of match.
fn policies() -> &'static (OutboundPolicy, InboundPolicy) {
    static POLICIES: OnceLock<(OutboundPolicy, InboundPolicy)> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let path = |k| Some(pb::PathMatch { kind: Some(k) });
        let header = |name: &str, v| pb::HeaderMatch { name: name.into(), value: Some(v) };
        let matches = vec![
            pb::Match {
                path: path(pb::path_match::Kind::Regex("/v[0-9]+/.*".into())),
                headers: vec![header("X-Canary", pb::header_match::Value::Exact("1".into()))],
                ..Default::default()
            },
            pb::Match { host: "Books.Example".into(), ..Default::default() },
            pb::Match {
                grpc: Some(pb::GrpcMatch { service: "pkg.Books".into(), method: "Get".into() }),
                ..Default::default()
            },
            pb::Match { path: path(pb::path_match::Kind::Prefix("/api".into())), ..Default::default() },
            pb::Match {
                method: "POST".into(),
                path: path(pb::path_match::Kind::Exact("/x".into())),
                headers: vec![header("x-user", pb::header_match::Value::Regex("a.*".into()))],
                ..Default::default()
            },
        ];
        let mut routes: Vec<pb::Route> = matches
            .iter()
            .enumerate()
            .map(|(i, m)| pb::Route { name: format!("p/r{i}"), matches: vec![m.clone()], ..Default::default() })
            .collect();
        routes.push(pb::Route { name: "p/all".into(), ..Default::default() });
        let outbound =
            pb::OutboundPolicy { exists: true, service: "books.default:80".into(), routes, ..Default::default() };
        let inbound = pb::InboundPolicy {
            name: "authz".into(),
            default: pb::DefaultAction::Deny.into(),
            authorizations: vec![
                pb::Authorization {
                    name: "web".into(),
                    identities: vec!["spiffe://fuzz.local/ns/default/sa/web".into()],
                    http: matches,
                    ..Default::default()
                },
                pb::Authorization { name: "net".into(), networks: vec!["10.0.0.0/8".into()], ..Default::default() },
            ],
            require_mtls: false,
        };
        let outbound = OutboundPolicy::compile(&outbound).unwrap_or_else(|e| panic!("the fixed route table: {e}"));
        let inbound = InboundPolicy::compile(&inbound).unwrap_or_else(|e| panic!("the fixed authorization: {e}"));
        (outbound, inbound)
    })
}
