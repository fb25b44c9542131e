//! Request matches as registries write them (paths, headers, method, host,
//! gRPC), and the syntactic subsumption the shadowing check relies on.

use crate::rules;

/// Conditions on a request; every one given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestMatch {
    /// The path.
    pub path: Option<PathMatch>,
    /// Headers (names lowercased).
    pub headers: Vec<HeaderMatch>,
    /// The HTTP method, as written (methods are case-sensitive).
    pub method: Option<String>,
    /// The host without port, lowercased.
    pub host: Option<String>,
    /// The gRPC service and method.
    pub grpc: Option<GrpcMatch>,
}

/// How a path is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix on segment boundaries.
    Prefix(String),
    /// An anchored regex.
    Regex(String),
}

/// One header condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lowercased header name.
    pub name: String,
    /// The value condition.
    pub value: ValueMatch,
}

/// How a header value is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// Equal to.
    Exact(String),
    /// An anchored regex.
    Regex(String),
}

/// A gRPC call: `/service/method`; a missing part matches any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMatch {
    /// Fully qualified service, e.g. `pkg.Books`.
    pub service: Option<String>,
    /// Method, e.g. `Get`.
    pub method: Option<String>,
}

impl RequestMatch {
    /// Whether every request `other` matches is also matched by `self`.
    ///
    /// Conservative: `false` whenever that cannot be decided syntactically
    /// (regexes are only compared for equality).
    pub fn subsumes(&self, other: &RequestMatch) -> bool {
        let path = match (&self.path, &other.path) {
            (None, _) => true,
            (Some(PathMatch::Prefix(p)), Some(PathMatch::Prefix(q))) => {
                rules::segment_prefix_matches(p, q.trim_end_matches('/'))
            }
            (Some(PathMatch::Prefix(p)), Some(PathMatch::Exact(x))) => rules::segment_prefix_matches(p, x),
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        let headers = self.headers.iter().all(|h| other.headers.contains(h));
        let method = self.method.is_none() || self.method == other.method;
        let host = self.host.is_none() || self.host == other.host;
        let grpc = match (&self.grpc, &other.grpc) {
            (None, _) => true,
            (Some(a), Some(b)) => {
                (a.service.is_none() || a.service == b.service) && (a.method.is_none() || a.method == b.method)
            }
            (Some(_), None) => false,
        };
        path && headers && method && host && grpc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> RequestMatch {
        RequestMatch { path: Some(PathMatch::Prefix(p.into())), ..Default::default() }
    }

    fn exact(p: &str) -> RequestMatch {
        RequestMatch { path: Some(PathMatch::Exact(p.into())), ..Default::default() }
    }

    #[test]
    fn subsumption_follows_segment_prefixes() {
        let all = RequestMatch::default();
        assert!(all.subsumes(&exact("/x")));
        assert!(!exact("/x").subsumes(&all));
        assert!(prefix("/api").subsumes(&exact("/api")));
        assert!(prefix("/api").subsumes(&exact("/api/v1")));
        assert!(prefix("/api/").subsumes(&prefix("/api/v1/")));
        assert!(prefix("/api").subsumes(&prefix("/api/")));
        assert!(prefix("/").subsumes(&prefix("/anything")));
        assert!(!prefix("/api").subsumes(&exact("/apix")), "not on a segment boundary");
        assert!(!prefix("/api/v1").subsumes(&prefix("/api")));
        assert!(!exact("/api").subsumes(&prefix("/api")));
        let re = RequestMatch { path: Some(PathMatch::Regex("/v.*".into())), ..Default::default() };
        assert!(re.subsumes(&re.clone()));
        assert!(!re.subsumes(&exact("/v1")), "regexes are only compared for equality");
    }

    #[test]
    fn subsumption_of_other_conditions() {
        let header = |v: &str| HeaderMatch { name: "x-canary".into(), value: ValueMatch::Exact(v.into()) };
        let a = RequestMatch { headers: vec![header("1")], ..Default::default() };
        let b = RequestMatch {
            headers: vec![header("1"), HeaderMatch { name: "x-user".into(), value: ValueMatch::Regex("a.*".into()) }],
            method: Some("GET".into()),
            ..Default::default()
        };
        assert!(a.subsumes(&b));
        assert!(!b.subsumes(&a));
        let c = RequestMatch { headers: vec![header("2")], ..Default::default() };
        assert!(!a.subsumes(&c));
        let get = RequestMatch { method: Some("GET".into()), ..Default::default() };
        let post = RequestMatch { method: Some("POST".into()), ..Default::default() };
        assert!(!get.subsumes(&post));
        let svc = |s: Option<&str>, m: Option<&str>| RequestMatch {
            grpc: Some(GrpcMatch { service: s.map(Into::into), method: m.map(Into::into) }),
            ..Default::default()
        };
        assert!(svc(Some("pkg.Books"), None).subsumes(&svc(Some("pkg.Books"), Some("Get"))));
        assert!(!svc(Some("pkg.Books"), Some("Get")).subsumes(&svc(Some("pkg.Books"), None)));
        assert!(!svc(Some("pkg.Books"), None).subsumes(&RequestMatch::default()));
        let host = RequestMatch { host: Some("books.example".into()), ..Default::default() };
        assert!(!host.subsumes(&get));
    }
}
