//! Policy compilation and evaluation (`mesh-policy`): a policy built from
//! the fuzzer's bytes (route rules as registries write them, plus retries,
//! faults, rate limits, budgets, and an authorization policy) is translated
//! to the Policy API, compiled as the proxy compiles it and evaluated on
//! requests built from the bytes. Never a panic; and the control plane's
//! shadowing check must be sound: when it says an earlier rule matches
//! everything a later one matches, the compiled matchers agree on every
//! request.

use arbitrary::{Result, Unstructured};
use mesh_policy::check::shadowed_rules;
use mesh_policy::cidr::Cidr;
use mesh_policy::inbound::{Client, InboundPolicy};
use mesh_policy::matcher::Match;
use mesh_policy::model::{GrpcMatch, HeaderMatch, PathMatch, RequestMatch, ValueMatch};
use mesh_policy::outbound::OutboundPolicy;
use mesh_proto::policy as pb;
use mesh_registry::translate::request_match;
use std::net::IpAddr;

const PATHS: [&str; 10] = ["/", "/api", "/api/", "/api/v1", "/apix", "/v1/x", "/pkg.Books/Get", "", "//", "/a/../b"];
const REGEXES: [&str; 6] = ["/v[0-9]+/.*", ".*", "a.*", "/api(/.*)?", "(", "[[:alpha:]]+"];
const HEADERS: [&str; 5] = ["x-canary", "x-user", "X-Canary", "host", "content-type"];
const VALUES: [&str; 5] = ["1", "2", "abc", "", "application/grpc"];
const METHODS: [&str; 5] = ["GET", "POST", "get", "CONNECT", "BREW"];
const HOSTS: [&str; 6] = ["books.example", "Books.Example", "books.example:8080", "[::1]", "::1", "10.0.0.1:80"];
const GRPC: [&str; 4] = ["pkg.Books", "Get", "pkg.Authors", ""];
const CONDITIONS: [&str; 6] = ["5xx", "gateway-error", "connect-failure", "reset", "unavailable", "sometimes"];
const NETWORKS: [&str; 6] = ["10.0.0.0/8", "10.1.2.3", "::ffff:10.0.0.0/104", "0.0.0.0/0", "::/0", "10.0.0.1/8"];
const IDENTITIES: [&str; 3] =
    ["spiffe://fuzz.local/ns/default/sa/web", "spiffe://fuzz.local/ns/shop/sa/cart", "spiffe://other/ns/x/sa/y"];

/// Runs one input.
pub fn run(data: &[u8]) {
    let _ = run_structured(&mut Unstructured::new(data));
}

fn run_structured(u: &mut Unstructured<'_>) -> Result<()> {
    let rules: Vec<Vec<RequestMatch>> = collect(u, 0..=5, |u| collect(u, 0..=3, request_match_model))?;
    let routes = rules.iter().enumerate().map(|(i, r)| route(u, i, r)).collect::<Result<Vec<_>>>()?;
    let outbound = pb::OutboundPolicy {
        exists: u.arbitrary()?,
        service: "books.default:80".into(),
        routes,
        circuit_breaker: if u.arbitrary()? {
            Some(pb::CircuitBreaker {
                consecutive_failures: u.arbitrary()?,
                base_ejection: Some(pb::Duration { millis: u.arbitrary()? }),
                max_ejection: Some(pb::Duration { millis: u.arbitrary()? }),
            })
        } else {
            None
        },
        limits: None,
        retry_budget: if u.arbitrary()? {
            Some(pb::RetryBudget {
                retry_ratio: u.arbitrary()?,
                min_retries_per_second: u.arbitrary()?,
                ttl: Some(pb::Duration { millis: u.arbitrary()? }),
            })
        } else {
            None
        },
    };
    let authorizations = collect(u, 0..=3, |u| {
        Ok(pb::Authorization {
            name: "a".into(),
            identities: collect(u, 0..=2, |u| pick(u, &IDENTITIES))?,
            namespaces: collect(u, 0..=2, |u| pick(u, &["default", "shop"]))?,
            networks: collect(u, 0..=2, |u| pick(u, &NETWORKS))?,
            http: collect(u, 0..=2, |u| request_match_model(u).map(|m| request_match(&m)))?,
            authenticated: u.arbitrary()?,
        })
    })?;
    let inbound = pb::InboundPolicy {
        name: "authz".into(),
        default: u.int_in_range(0..=4)?,
        authorizations,
        require_mtls: u.arbitrary()?,
    };

    let refs: Vec<&[RequestMatch]> = rules.iter().map(Vec::as_slice).collect();
    let shadowed = shadowed_rules(&refs);
    // Compiling must never panic; a policy it refuses has a reason.
    let compiled_out = OutboundPolicy::compile(&outbound);
    let compiled_in = InboundPolicy::compile(&inbound);
    let singles: Vec<(&RequestMatch, Option<Match>)> =
        rules.iter().flatten().map(|m| (m, Match::compile(&request_match(m)).ok())).collect();
    for _ in 0..u.int_in_range(1..=4)? {
        let Some(req) = request(u)? else { continue };
        if let Ok(policy) = &compiled_out {
            let chosen = policy.routes.iter().position(|r| r.matches(&req));
            if let Some(s) = shadowed.iter().find(|s| Some(s.rule) == chosen) {
                panic!("rule {} was reported shadowed by {:?} but took {:?} {}", s.rule, s.by, req.method, req.uri);
            }
            if let Some(bucket) = chosen.and_then(|i| policy.routes[i].rate_limit.as_ref()) {
                let _ = bucket.try_take();
            }
            policy.budget.deposit();
            let _ = policy.budget.try_withdraw();
        }
        // Subsumption between single matches, on compiled matchers.
        for (a, ca) in &singles {
            for (b, cb) in &singles {
                if let (Some(ca), Some(cb)) = (ca, cb)
                    && a.subsumes(b)
                {
                    assert!(!cb.matches(&req) || ca.matches(&req), "{a:?} subsumes {b:?} but not on {req:?}");
                }
            }
        }
        if let Ok(policy) = &compiled_in {
            let ip = client_ip(u)?;
            let identity = if u.arbitrary()? { Some(pick(u, &IDENTITIES)?) } else { None };
            let client = Client { identity, ip };
            let _ = policy.authorize(&client, Some(&req));
            let _ = policy.authorize(&client, None);
        }
    }
    // Networks the parser accepts contain their own address, mapped or not.
    let text = arbitrary_or(u, &NETWORKS)?;
    if let Ok(cidr) = text.parse::<Cidr>() {
        assert!(cidr.contains(cidr.addr()), "{cidr} does not contain its own address");
        if let IpAddr::V4(v4) = cidr.addr() {
            assert!(cidr.contains(IpAddr::V6(v4.to_ipv6_mapped())), "{cidr} misses its IPv4-mapped address");
        }
    }
    Ok(())
}

fn collect<T>(
    u: &mut Unstructured<'_>,
    range: std::ops::RangeInclusive<usize>,
    mut f: impl FnMut(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(range)?;
    (0..n).map(|_| f(u)).collect()
}

fn pick(u: &mut Unstructured<'_>, from: &[&str]) -> Result<String> {
    Ok((*u.choose(from)?).to_string())
}

/// Mostly from `known` (so matches meet requests), sometimes any string.
fn arbitrary_or(u: &mut Unstructured<'_>, known: &[&str]) -> Result<String> {
    if u.ratio(3, 4)? { pick(u, known) } else { u.arbitrary() }
}

fn request_match_model(u: &mut Unstructured<'_>) -> Result<RequestMatch> {
    let path = match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(PathMatch::Exact(arbitrary_or(u, &PATHS)?)),
        2 => Some(PathMatch::Prefix(arbitrary_or(u, &PATHS)?)),
        _ => Some(PathMatch::Regex(arbitrary_or(u, &REGEXES)?)),
    };
    let headers = collect(u, 0..=2, |u| {
        let name = arbitrary_or(u, &HEADERS)?;
        let value = if u.arbitrary()? {
            ValueMatch::Exact(arbitrary_or(u, &VALUES)?)
        } else {
            ValueMatch::Regex(arbitrary_or(u, &REGEXES)?)
        };
        Ok(HeaderMatch { name, value })
    })?;
    let opt = |u: &mut Unstructured<'_>, known: &[&str]| -> Result<Option<String>> {
        if u.arbitrary()? { arbitrary_or(u, known).map(Some) } else { Ok(None) }
    };
    let method = opt(u, &METHODS)?;
    let host = opt(u, &HOSTS)?;
    let grpc = if u.arbitrary()? { Some(GrpcMatch { service: opt(u, &GRPC)?, method: opt(u, &GRPC)? }) } else { None };
    Ok(RequestMatch { path, headers, method, host, grpc })
}

fn route(u: &mut Unstructured<'_>, i: usize, rule: &[RequestMatch]) -> Result<pb::Route> {
    let ms = |u: &mut Unstructured<'_>| -> Result<Option<pb::Duration>> {
        Ok(if u.arbitrary()? { Some(pb::Duration { millis: u.arbitrary()? }) } else { None })
    };
    Ok(pb::Route {
        name: format!("p/r{i}"),
        matches: rule.iter().map(request_match).collect(),
        backends: collect(u, 0..=3, |u| {
            Ok(pb::Backend { target: pick(u, &["a:80", "b:80"])?, weight: u.arbitrary()? })
        })?,
        timeout: ms(u)?,
        retry: if u.arbitrary()? {
            Some(pb::Retry {
                max_retries: u.arbitrary()?,
                on: collect(u, 0..=3, |u| arbitrary_or(u, &CONDITIONS))?,
                backoff_base: ms(u)?,
                backoff_max: ms(u)?,
                per_try_timeout: ms(u)?,
                buffer_limit_bytes: u.arbitrary()?,
            })
        } else {
            None
        },
        fault: if u.arbitrary()? {
            Some(pb::Fault {
                abort_percent: u.arbitrary()?,
                abort_http_status: u.arbitrary()?,
                abort_grpc_status: u.arbitrary()?,
                delay_percent: u.arbitrary()?,
                delay: ms(u)?,
            })
        } else {
            None
        },
        rate_limit: if u.arbitrary()? {
            Some(pb::RateLimit { requests_per_second: u.arbitrary()?, burst: u.arbitrary()? })
        } else {
            None
        },
    })
}

/// A request head, when the bytes make a valid one.
fn request(u: &mut Unstructured<'_>) -> Result<Option<http::request::Parts>> {
    let mut uri = arbitrary_or(u, &PATHS)?;
    if u.ratio(1, 4)? {
        uri = format!("http://{}{uri}", arbitrary_or(u, &HOSTS)?);
    }
    if u.ratio(1, 4)? {
        uri.push_str("?q=1");
    }
    let mut b = http::Request::builder().method(arbitrary_or(u, &METHODS)?.as_str()).uri(uri);
    for _ in 0..u.int_in_range(0..=3)? {
        b = b.header(arbitrary_or(u, &HEADERS)?, arbitrary_or(u, &VALUES)?);
    }
    if u.arbitrary()? {
        b = b.header("host", arbitrary_or(u, &HOSTS)?);
    }
    Ok(b.body(()).ok().map(|r| r.into_parts().0))
}

fn client_ip(u: &mut Unstructured<'_>) -> Result<IpAddr> {
    Ok(match u.int_in_range(0..=2)? {
        0 => IpAddr::V4(u.arbitrary::<[u8; 4]>()?.into()),
        1 => IpAddr::V4(u.arbitrary::<[u8; 4]>()?.into()).to_canonical(),
        _ => IpAddr::V6(std::net::Ipv4Addr::from(u.arbitrary::<[u8; 4]>()?).to_ipv6_mapped()),
    })
}
