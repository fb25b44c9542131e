//! The primitive matching rules, written once: the compiled matchers the
//! proxy runs ([`crate::matcher`]) and the control plane's shadowing check
//! ([`crate::model::RequestMatch::subsumes`]) both call these.

use regex::Regex;

/// Whether the path prefix `prefix` matches `path` on segment boundaries:
/// `/api` matches `/api` and `/api/x`, not `/apix`; a trailing `/` on the
/// prefix is ignored and `/` (or empty) matches every path.
pub fn segment_prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// Compiles a regex anchored at both ends: it must match the whole path or
/// header value, never a part of it.
pub fn anchored_regex(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{re})$"))
}

/// Splits a gRPC request path `/package.Service/Method` into service and
/// method (empty strings where a part is missing).
pub fn grpc_parts(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    (parts.next().unwrap_or(""), parts.next().unwrap_or(""))
}

/// A host as policies compare it: lowercased, without a port.
pub fn normalize_host(host: &str) -> String {
    let host = match host.rsplit_once(':') {
        // Keep IPv6 literals ("[::1]", "::1") whole; only a trailing `:port` goes.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchored_regexes() {
        let re = anchored_regex("/v[0-9]+").expect("compiles");
        assert!(re.is_match("/v1") && !re.is_match("/v1/x"));
        assert!(anchored_regex("(").is_err());
    }

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(normalize_host("Books.Example:8080"), "books.example");
        assert_eq!(normalize_host("books"), "books");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
    }

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(grpc_parts("/pkg.Books/Get"), ("pkg.Books", "Get"));
        assert_eq!(grpc_parts("/pkg.Books"), ("pkg.Books", ""));
        assert_eq!(grpc_parts("/"), ("", ""));
    }
}
