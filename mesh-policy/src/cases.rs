//! The table of cases every definition of a matching rule is run against:
//! the compiled matcher the proxy evaluates, and the model's subsumption the
//! control plane's shadowing check uses. Both must agree with the table, so
//! they cannot drift apart again.

use crate::matcher::Match;
use crate::model::{PathMatch, RequestMatch};
use mesh_proto::policy as pb;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Exact,
    Prefix,
    Regex,
}

/// (kind, pattern, request path, matches?)
const PATHS: &[(Kind, &str, &str, bool)] = &[
    (Kind::Prefix, "/api", "/api", true),
    (Kind::Prefix, "/api", "/api/v1", true),
    (Kind::Prefix, "/api", "/api/", true),
    (Kind::Prefix, "/api", "/apix", false),
    (Kind::Prefix, "/api/", "/api", true),
    (Kind::Prefix, "/api/", "/api/v1", true),
    (Kind::Prefix, "/api/v1", "/api", false),
    (Kind::Prefix, "/", "/anything", true),
    (Kind::Prefix, "/", "/", true),
    (Kind::Prefix, "", "/x", true),
    (Kind::Prefix, "/API", "/api", false),
    (Kind::Exact, "/a", "/a", true),
    (Kind::Exact, "/a", "/a/", false),
    (Kind::Exact, "/a", "/A", false),
    (Kind::Exact, "/a", "/a/b", false),
    (Kind::Regex, "/v[0-9]+", "/v1", true),
    (Kind::Regex, "/v[0-9]+", "/v1/x", false),
    (Kind::Regex, "/v[0-9]+", "/x/v1", false),
    (Kind::Regex, "/v[0-9]+/.*", "/v2/books", true),
    (Kind::Regex, "/a|/b", "/b", true),
    (Kind::Regex, "/a|/b", "/ab", false),
];

fn compiled(kind: Kind, pattern: &str) -> Match {
    let kind = match kind {
        Kind::Exact => pb::path_match::Kind::Exact(pattern.into()),
        Kind::Prefix => pb::path_match::Kind::Prefix(pattern.into()),
        Kind::Regex => pb::path_match::Kind::Regex(pattern.into()),
    };
    Match::compile(&pb::Match { path: Some(pb::PathMatch { kind: Some(kind) }), ..Default::default() })
        .expect("compiles")
}

fn model(kind: Kind, pattern: &str) -> RequestMatch {
    let path = match kind {
        Kind::Exact => PathMatch::Exact(pattern.into()),
        Kind::Prefix => PathMatch::Prefix(pattern.into()),
        Kind::Regex => PathMatch::Regex(pattern.into()),
    };
    RequestMatch { path: Some(path), ..Default::default() }
}

fn request(path: &str) -> http::request::Parts {
    http::Request::builder().uri(path).body(()).expect("request").into_parts().0
}

#[test]
fn the_proxy_matches_paths_as_the_table_says() {
    for &(kind, pattern, path, want) in PATHS {
        let got = compiled(kind, pattern).matches(&request(path));
        assert_eq!(got, want, "{kind:?} {pattern:?} against {path:?}");
    }
}

#[test]
fn the_control_planes_subsumption_agrees_with_the_table() {
    // A match subsumes the exact match of a path exactly when it matches
    // that path (regexes are only compared syntactically, so they are left
    // out: the check is conservative for them by design).
    for &(kind, pattern, path, want) in PATHS {
        if matches!(kind, Kind::Regex) {
            continue;
        }
        let got = model(kind, pattern).subsumes(&model(Kind::Exact, path));
        assert_eq!(got, want, "{kind:?} {pattern:?} subsumes exact {path:?}");
    }
}

/// (networks of a rule, client address, allowed?)
const NETWORKS: &[(&str, &str, bool)] = &[
    ("10.0.0.0/8", "10.1.2.3", true),
    ("10.0.0.0/8", "11.0.0.1", false),
    ("10.0.0.0/8", "::ffff:10.1.2.3", true),
    ("10.1.2.3/32", "10.1.2.3", true),
    ("10.1.2.3/32", "10.1.2.4", false),
    ("0.0.0.0/0", "192.0.2.1", true),
    ("0.0.0.0/0", "2001:db8::1", false),
    ("::/0", "2001:db8::1", true),
    ("fd00::/8", "fd12::1", true),
    ("fd00::/8", "fe80::1", false),
];

#[test]
fn the_proxy_authorizes_networks_as_the_table_says() {
    use crate::inbound::{Client, InboundPolicy};
    for &(network, ip, want) in NETWORKS {
        // The control plane serves networks as it parsed them.
        let served = network.parse::<crate::cidr::Cidr>().expect("valid").to_string();
        let policy = InboundPolicy::compile(&pb::InboundPolicy {
            name: "p".into(),
            default: pb::DefaultAction::Deny as i32,
            authorizations: vec![pb::Authorization { name: "r".into(), networks: vec![served], ..Default::default() }],
            require_mtls: false,
        })
        .expect("compiles");
        let client = Client { identity: None, ip: ip.parse().expect("ip") };
        assert_eq!(policy.authorize(&client, None).allowed, want, "{network} admits {ip}");
    }
}
