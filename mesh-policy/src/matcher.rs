//! Request matching: the route and authorization matches of the Policy API,
//! compiled once (regexes included) and evaluated per request.

use crate::rules;
use http::request::Parts;
use mesh_proto::policy as pb;
use regex::Regex;

/// A policy that cannot be compiled (the control plane validates, so this
/// means a control plane bug or a version skew; the policy is refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct InvalidPolicy(pub String);

/// How a path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix on segment boundaries (`/api` matches `/api` and `/api/x`, not `/apix`).
    Prefix(String),
    /// A regex over the whole path.
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => rules::segment_prefix_matches(p, path),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// How a header value is matched.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Equal to.
    Exact(String),
    /// Matching a regex (anchored).
    Regex(Regex),
}

/// One compiled match: every present condition must hold.
#[derive(Debug, Clone, Default)]
pub struct Match {
    path: Option<PathMatch>,
    headers: Vec<(http::HeaderName, ValueMatch)>,
    method: Option<http::Method>,
    host: Option<String>,
    grpc: Option<(String, String)>,
}

fn anchored(re: &str) -> Result<Regex, InvalidPolicy> {
    rules::anchored_regex(re).map_err(|e| InvalidPolicy(format!("regex {re:?}: {e}")))
}

impl Match {
    /// Compiles a wire match.
    pub fn compile(m: &pb::Match) -> Result<Self, InvalidPolicy> {
        let path = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
            None => None,
            Some(pb::path_match::Kind::Exact(p)) => Some(PathMatch::Exact(p.clone())),
            Some(pb::path_match::Kind::Prefix(p)) => Some(PathMatch::Prefix(p.clone())),
            Some(pb::path_match::Kind::Regex(r)) => Some(PathMatch::Regex(anchored(r)?)),
        };
        let mut headers = Vec::new();
        for h in &m.headers {
            let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                .map_err(|_| InvalidPolicy(format!("header name {:?}", h.name)))?;
            let value = match &h.value {
                Some(pb::header_match::Value::Exact(v)) => ValueMatch::Exact(v.clone()),
                Some(pb::header_match::Value::Regex(r)) => ValueMatch::Regex(anchored(r)?),
                None => return Err(InvalidPolicy(format!("header {:?} without a value match", h.name))),
            };
            headers.push((name, value));
        }
        let method = if m.method.is_empty() {
            None
        } else {
            Some(
                http::Method::from_bytes(m.method.as_bytes())
                    .map_err(|_| InvalidPolicy(format!("method {:?}", m.method)))?,
            )
        };
        let host = (!m.host.is_empty()).then(|| m.host.to_ascii_lowercase());
        let grpc = m.grpc.as_ref().map(|g| (g.service.clone(), g.method.clone()));
        Ok(Self { path, headers, method, host, grpc })
    }

    /// Whether a request matches.
    pub fn matches(&self, req: &Parts) -> bool {
        let path = req.uri.path();
        if let Some(p) = &self.path
            && !p.matches(path)
        {
            return false;
        }
        if let Some(m) = &self.method
            && req.method != m
        {
            return false;
        }
        if let Some(h) = &self.host
            && request_host(&req.uri, &req.headers).as_deref() != Some(h.as_str())
        {
            return false;
        }
        if let Some((svc, method)) = &self.grpc {
            // gRPC paths are /package.Service/Method.
            let (s, m) = rules::grpc_parts(path);
            if (!svc.is_empty() && s != svc) || (!method.is_empty() && m != method) {
                return false;
            }
        }
        self.headers.iter().all(|(name, want)| {
            req.headers.get_all(name).iter().any(|v| {
                let Ok(v) = v.to_str() else { return false };
                match want {
                    ValueMatch::Exact(e) => v == e,
                    ValueMatch::Regex(r) => r.is_match(v),
                }
            })
        })
    }
}

/// The request's host, lowercased and without a port: from the URI
/// (HTTP/2 `:authority`) or the `Host` header.
pub fn request_host(uri: &http::Uri, headers: &http::HeaderMap) -> Option<String> {
    let authority = uri
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| headers.get(http::header::HOST)?.to_str().ok().map(str::to_string))?;
    Some(rules::normalize_host(&authority))
}

/// Whether any of `matches` matches; an empty list matches everything.
pub fn any(matches: &[Match], req: &Parts) -> bool {
    matches.is_empty() || matches.iter().any(|m| m.matches(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn m(f: impl FnOnce(&mut pb::Match)) -> Match {
        let mut pm = pb::Match::default();
        f(&mut pm);
        Match::compile(&pm).expect("compiles")
    }

    fn path(kind: pb::path_match::Kind) -> Option<pb::PathMatch> {
        Some(pb::PathMatch { kind: Some(kind) })
    }

    #[test]
    fn paths() {
        let prefix = m(|x| x.path = path(pb::path_match::Kind::Prefix("/api".into())));
        assert!(prefix.matches(&req("GET", "/api", &[])));
        assert!(prefix.matches(&req("GET", "/api/v1?x=1", &[])));
        assert!(!prefix.matches(&req("GET", "/apix", &[])));
        let root = m(|x| x.path = path(pb::path_match::Kind::Prefix("/".into())));
        assert!(root.matches(&req("GET", "/anything", &[])));
        let exact = m(|x| x.path = path(pb::path_match::Kind::Exact("/a".into())));
        assert!(exact.matches(&req("GET", "/a", &[])) && !exact.matches(&req("GET", "/a/", &[])));
        let re = m(|x| x.path = path(pb::path_match::Kind::Regex("/v[0-9]+/.*".into())));
        assert!(re.matches(&req("GET", "/v2/books", &[])));
        assert!(!re.matches(&req("GET", "/x/v2/books", &[])), "regexes are anchored");
    }

    #[test]
    fn headers_method_host_grpc() {
        let h = m(|x| {
            x.headers = vec![pb::HeaderMatch {
                name: "X-Canary".into(),
                value: Some(pb::header_match::Value::Exact("1".into())),
            }];
            x.method = "POST".into();
        });
        assert!(h.matches(&req("POST", "/", &[("x-canary", "1")])));
        assert!(!h.matches(&req("GET", "/", &[("x-canary", "1")])));
        assert!(!h.matches(&req("POST", "/", &[("x-canary", "2")])));
        let host = m(|x| x.host = "Books.Example".into());
        assert!(host.matches(&req("GET", "http://books.example:8080/", &[])));
        assert!(host.matches(&req("GET", "/", &[("host", "books.example")])));
        assert!(!host.matches(&req("GET", "/", &[("host", "authors.example")])));
        let g = m(|x| x.grpc = Some(pb::GrpcMatch { service: "pkg.Books".into(), method: String::new() }));
        assert!(g.matches(&req("POST", "/pkg.Books/Get", &[])));
        assert!(!g.matches(&req("POST", "/pkg.Authors/Get", &[])));
    }

    #[test]
    fn bad_regexes_are_refused() {
        let pm = pb::Match { path: path(pb::path_match::Kind::Regex("(".into())), ..Default::default() };
        assert!(Match::compile(&pm).is_err());
    }
}
