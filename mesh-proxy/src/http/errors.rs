//! Errors the proxy answers itself, shaped for the client: a plain HTTP
//! status with a `mesh-proxy-error` header, or, for gRPC, status 200 with
//! `grpc-status` so gRPC clients see a proper status code.

use crate::body::{self, Body};
use http::{HeaderValue, Response, StatusCode};

impl From<crate::balance::Unavailable> for ProxyError {
    fn from(u: crate::balance::Unavailable) -> Self {
        match u {
            crate::balance::Unavailable::Unresolved(t) => ProxyError::Unresolved(t),
            crate::balance::Unavailable::NoEndpoints(t) => ProxyError::NoEndpoints(t),
        }
    }
}

/// Why the proxy could not forward a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProxyError {
    /// Discovery has no endpoint that may take traffic.
    #[error("no endpoints available for {0}")]
    NoEndpoints(String),
    /// Discovery has not answered for the target.
    #[error("discovery has not resolved {0} (is the control plane reachable?)")]
    Unresolved(String),
    /// Every connection attempt failed.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The target.
        target: String,
        /// The last failure.
        reason: String,
    },
    /// The upstream broke the exchange before a response.
    #[error("upstream {target} failed: {reason}")]
    Upstream {
        /// The target.
        target: String,
        /// What happened.
        reason: String,
    },
    /// The upstream refused the request without processing it (HTTP/2
    /// `REFUSED_STREAM` or GOAWAY) after its body was consumed: safe to send
    /// again for any method, by whoever still has the body.
    #[error("upstream {target} did not process the request: {reason}")]
    Unprocessed {
        /// The target.
        target: String,
        /// What happened.
        reason: String,
    },
    /// The request's deadline passed.
    #[error("request to {target} timed out after {after:?} (route {route})")]
    Timeout {
        /// The target.
        target: String,
        /// The route whose timeout fired.
        route: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// A route's rate limit refused the request.
    #[error("rate limit of {rate}/s exceeded on route {route}")]
    RateLimited {
        /// The route.
        route: String,
        /// Its rate.
        rate: f64,
    },
    /// Too many requests in flight or waiting for the target.
    #[error("{what} limit ({max}) reached for {target}")]
    Overloaded {
        /// The target.
        target: String,
        /// Which limit: concurrency, pending or connection.
        what: &'static str,
        /// The limit.
        max: u32,
    },
    /// The client's request body failed while the proxy read it.
    #[error("reading the request body failed: {0}")]
    BadRequest(String),
    /// Inbound authorization denied the request.
    #[error("denied by policy {policy} ({rule})")]
    Denied {
        /// The policy that decided.
        policy: String,
        /// The rule (or default) that decided.
        rule: String,
    },
}

impl ProxyError {
    /// The HTTP status that best describes the error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoEndpoints(_) | ProxyError::Unresolved(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Unprocessed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Denied { .. } => StatusCode::FORBIDDEN,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status code.
    pub fn grpc_status(&self) -> u32 {
        match self {
            ProxyError::Timeout { .. } => 4,     // DEADLINE_EXCEEDED
            ProxyError::RateLimited { .. } => 8, // RESOURCE_EXHAUSTED
            ProxyError::Denied { .. } => 7,      // PERMISSION_DENIED
            ProxyError::BadRequest(_) => 3,      // INVALID_ARGUMENT
            _ => 14,                             // UNAVAILABLE
        }
    }
}

/// The header naming the proxy's error, so operators can tell a proxy
/// failure from an application's own 5xx.
pub const ERROR_HEADER: &str = "mesh-proxy-error";

/// Set by a server-side (inbound) proxy on the error it answers when its
/// app never saw the request (the app refused the connection: it is
/// stopping, or not up yet). A client proxy that reached this proxy over
/// mTLS sends such a request to another endpoint, for any method, as it
/// does with an HTTP/2 `REFUSED_STREAM`. Inbound proxies remove it from
/// their apps' responses, so only a proxy can say it.
/// A `HeaderName`, not a `&str`: every response looks it up, and a string
/// would be parsed and validated again at each lookup.
pub const UNPROCESSED_HEADER: http::HeaderName = http::HeaderName::from_static("mesh-proxy-unprocessed");

/// gRPC's status header (responses' trailers-only form), as a `HeaderName`
/// for the same reason.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

impl ProxyError {
    /// Whether the request surely reached no application: every connection
    /// attempt failed, or the upstream refused it unprocessed.
    pub fn unprocessed(&self) -> bool {
        matches!(self, ProxyError::Connect { .. } | ProxyError::Unprocessed { .. })
    }
}

/// Builds the response for `err`, in gRPC terms when `grpc` is true.
pub fn response(err: &ProxyError, grpc: bool) -> Response<Body> {
    let msg = err.to_string();
    let value = HeaderValue::from_str(&msg).unwrap_or_else(|_| HeaderValue::from_static("proxy error"));
    let mut rsp = if grpc {
        let mut r = Response::new(body::empty());
        let h = r.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(err.grpc_status()));
        h.insert("grpc-message", value.clone());
        r
    } else {
        let mut r = Response::new(body::full(format!("{msg}\n")));
        *r.status_mut() = err.status();
        r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        r
    };
    rsp.headers_mut().insert(ERROR_HEADER, value);
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_trailers_only_responses() {
        let e = ProxyError::NoEndpoints("books.default:80".into());
        let r = response(&e, true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        let r = response(&e, false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers()[ERROR_HEADER].to_str().expect("ascii").contains("books.default:80"));
    }
}
