//! The request match schema, shared by route rules (`matches`) and
//! authorization rules (`http`).

use super::check::Checker;
use super::text::quote;
use mesh_policy::model::{GrpcMatch, HeaderMatch, PathMatch, RequestMatch, ValueMatch};
use mesh_policy::rules::anchored_regex;
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMatch {
    #[serde(default)]
    path: Option<Spanned<RawPath>>,
    #[serde(default)]
    headers: Option<Vec<Spanned<RawHeader>>>,
    #[serde(default)]
    method: Option<Spanned<String>>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    grpc: Option<Spanned<RawGrpc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPath {
    #[serde(default)]
    exact: Option<Spanned<String>>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    regex: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHeader {
    name: Spanned<String>,
    #[serde(default)]
    exact: Option<Spanned<String>>,
    #[serde(default)]
    regex: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGrpc {
    #[serde(default)]
    service: Option<Spanned<String>>,
    #[serde(default)]
    method: Option<Spanned<String>>,
}

impl Checker {
    /// One match; `field` locates it in `object` (`matches[0]`, `http[1]`).
    /// `None` when it has a problem.
    pub(super) fn request_match(&mut self, object: &str, field: &str, raw: Spanned<RawMatch>) -> Option<RequestMatch> {
        let raw = raw.value;
        let before = self.problems.len();
        let path = raw.path.and_then(|p| self.path_match(object, &format!("{field}.path"), p));
        let mut headers = Vec::new();
        for (i, header) in raw.headers.unwrap_or_default().into_iter().enumerate() {
            if let Some(h) = self.header_match(object, &format!("{field}.headers[{i}]"), header) {
                headers.push(h);
            }
        }
        let method = raw.method.and_then(|m| self.method(object, &format!("{field}.method"), m));
        let host = raw.host.and_then(|h| self.host(object, &format!("{field}.host"), h));
        let grpc = raw.grpc.and_then(|g| self.grpc_match(object, &format!("{field}.grpc"), g));
        (self.problems.len() == before).then_some(RequestMatch { path, headers, method, host, grpc })
    }

    fn path_match(&mut self, object: &str, field: &str, raw: Spanned<RawPath>) -> Option<PathMatch> {
        let at = raw.referenced;
        let RawPath { exact, prefix, regex } = raw.value;
        let given: Vec<(&str, Spanned<String>)> = [("exact", exact), ("prefix", prefix), ("regex", regex)]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        let mut given = given.into_iter();
        let (Some((kind, value)), None) = (given.next(), given.next()) else {
            self.fail(&at, object, field, "give exactly one of exact, prefix or regex");
            return None;
        };
        let field = format!("{field}.{kind}");
        match kind {
            "regex" => self.regex(object, &field, &value).then_some(PathMatch::Regex(value.value)),
            _ if !value.value.starts_with('/') => {
                let message =
                    format!("{} does not start with '/': paths are absolute, as in /api", quote(&value.value));
                self.fail(&value.referenced, object, &field, message);
                None
            }
            "exact" => Some(PathMatch::Exact(value.value)),
            _ => Some(PathMatch::Prefix(value.value)),
        }
    }

    fn header_match(&mut self, object: &str, field: &str, raw: Spanned<RawHeader>) -> Option<HeaderMatch> {
        let at = raw.referenced;
        let raw = raw.value;
        let name = raw.name.value.trim().to_ascii_lowercase();
        let name_ok = http::HeaderName::from_bytes(name.as_bytes()).is_ok();
        if !name_ok {
            let message = format!("{} is not a valid header name", quote(&raw.name.value));
            self.fail(&raw.name.referenced, object, &format!("{field}.name"), message);
        }
        let value = match (raw.exact, raw.regex) {
            (Some(exact), None) => Some(ValueMatch::Exact(exact.value)),
            (None, Some(regex)) => {
                self.regex(object, &format!("{field}.regex"), &regex).then_some(ValueMatch::Regex(regex.value))
            }
            _ => {
                self.fail(&at, object, field, "give exactly one of exact or regex");
                None
            }
        };
        Some(HeaderMatch { name, value: value? }).filter(|_| name_ok)
    }

    fn method(&mut self, object: &str, field: &str, raw: Spanned<String>) -> Option<String> {
        let method = raw.value.trim();
        let token = !method.is_empty() && http::Method::from_bytes(method.as_bytes()).is_ok();
        if !token {
            self.fail(&raw.referenced, object, field, format!("{} is not an HTTP method", quote(&raw.value)));
            return None;
        }
        if method.bytes().any(|b| b.is_ascii_lowercase()) {
            let message = format!(
                "{} is not uppercase: methods are case-sensitive, write {}",
                quote(method),
                method.to_ascii_uppercase()
            );
            self.fail(&raw.referenced, object, field, message);
            return None;
        }
        Some(method.to_string())
    }

    fn host(&mut self, object: &str, field: &str, raw: Spanned<String>) -> Option<String> {
        let host = raw.value.trim().to_ascii_lowercase();
        let bracketed = host.starts_with('[') && host.ends_with(']');
        let problem = if host.is_empty() {
            Some("is empty")
        } else if host.contains(':') && !bracketed {
            Some("has a port: hosts are matched without one")
        } else if host.contains(['/', '*', ' ', '\t', '@']) {
            Some("is not a host name: write the bare name, as in books.example")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.fail(&raw.referenced, object, field, format!("{} {problem}", quote(&raw.value)));
            return None;
        }
        Some(host)
    }

    fn grpc_match(&mut self, object: &str, field: &str, raw: Spanned<RawGrpc>) -> Option<GrpcMatch> {
        let at = raw.referenced;
        let raw = raw.value;
        if raw.service.is_none() && raw.method.is_none() {
            self.fail(&at, object, field, "give service, method or both (or remove grpc)");
            return None;
        }
        let mut part = |name: &str, value: Option<Spanned<String>>| -> Result<Option<String>, ()> {
            let Some(value) = value else { return Ok(None) };
            let text = value.value.trim();
            if text.is_empty() || text.contains(['/', ' ']) {
                let message = format!("{} is not a gRPC {name} name (as in pkg.Books and Get)", quote(&value.value));
                self.fail(&value.referenced, object, &format!("{field}.{name}"), message);
                return Err(());
            }
            Ok(Some(text.to_string()))
        };
        let service = part("service", raw.service);
        let method = part("method", raw.method);
        Some(GrpcMatch { service: service.ok()?, method: method.ok()? })
    }

    /// Whether a regex compiles (as proxies compile it); reports why not.
    pub(super) fn regex(&mut self, object: &str, field: &str, value: &Spanned<String>) -> bool {
        // The user's own regex first, so that the error's wording is about it.
        let error = match regex::Regex::new(&value.value) {
            Ok(_) => anchored_regex(&value.value).err(),
            Err(err) => Some(err),
        };
        let Some(error) = error else { return true };
        let text = error.to_string();
        let reason = text
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| l.trim_start_matches("error: ").to_string())
            .unwrap_or(text);
        self.fail(
            &value.referenced,
            object,
            field,
            format!("regex {} does not compile: {reason}", quote(&value.value)),
        );
        false
    }
}
