//! The file registry (universal mode): services, ports, endpoints and their
//! traffic and authorization policies in one YAML file, validated as a whole
//! and reloaded when the file changes.
//!
//! ```yaml
//! services:
//!   - name: books              # DNS label; required
//!     namespace: default       # default "default"
//!     serviceAccount: books    # default: the service name
//!     addresses: [10.96.0.10]  # virtual IPs, optional
//!     ports:                   # at least one
//!       - port: 7001
//!         name: http           # optional
//!         targetPort: 7001     # default: port
//!         protocol: http       # detect (default) | http | http1 | http2 | grpc | opaque | tcp
//!     endpoints:
//!       - address: 127.0.0.1:4243  # ip:port, single-port services only
//!       - ip: 10.0.0.5             # or ip: each port's targetPort applies
//!         weight: 100              # 0..=1000000, default 100; 0 drains
//!         labels: {replica: books-0}
//!     trafficPolicy:           # optional; for clients of this service
//!       circuitBreaker: {consecutiveFailures: 5, baseEjection: 10s, maxEjection: 5m}
//!       limits: {maxConcurrentRequests: 1000, maxPendingRequests: 100, maxConnectionsPerEndpoint: 0}
//!       retryBudget: {ratio: 0.2, minPerSecond: 10, ttl: 10s}
//! routes:                      # outbound, at most one per service port
//!   - name: books-routes
//!     namespace: default       # default "default"; also the target service's
//!     service: books           # the target service
//!     port: 7001               # optional: every port of the service when omitted
//!     rules:                   # first match wins; at least one
//!       - name: canary         # default "rule-<index>"
//!         matches:             # any one; omitted = every request
//!           - path: {prefix: /api}        # or {exact: /x} or {regex: "/v[0-9]+/.*"} (whole path)
//!             headers: [{name: x-canary, exact: "1"}, {name: x-user, regex: "a.*"}]
//!             method: GET
//!             host: books.example
//!             grpc: {service: pkg.Books, method: Get}
//!         backends:            # default: the target itself
//!           - service: books   # namespace: the route's; port: the route's target port
//!             weight: 90       # default 1; the sum must not be 0
//!           - {service: books-v2, namespace: default, port: 7001, weight: 10}
//!         timeout: 2s
//!         retries: {attempts: 2, on: [5xx, gateway-error, connect-failure, reset, unavailable],
//!                   backoff: {base: 25ms, max: 250ms}, perTryTimeout: 1s, bufferLimit: 65536}
//!         faults: {abort: {percent: 10, httpStatus: 503}, delay: {percent: 5, duration: 100ms}}
//!         rateLimit: {requestsPerSecond: 100, burst: 20}
//! authorizations:              # inbound, at most one per workload port
//!   - name: books-authz
//!     namespace: default
//!     service: books           # its workloads (service account) on its target ports
//!     port: 7001               # optional: one service port; all when omitted
//!     default: deny            # deny (default) | allow | authenticated
//!     requireMtls: true        # default false
//!     rules:
//!       - name: allow-web
//!         identities: [spiffe://mesh.local/ns/default/sa/web]
//!         serviceAccounts: [web, shop/cart]   # name (the policy's namespace) or namespace/name
//!         namespaces: [shop]
//!         networks: [10.0.0.0/8]              # unauthenticated clients; a bare IP is a /32
//!         http: [{path: {prefix: /admin}, method: GET}]   # the routes' match schema
//! ```
//!
//! A file is accepted whole or not at all: [`parse`] reports every problem it
//! finds, each with its line and column and naming the object and field, and
//! [`FileRegistry`] keeps the last good registry (services and policies) in
//! force while a rejected file is being fixed.

mod authorizations;
mod check;
mod matches;
mod routes;
mod services;
mod text;
mod traffic;

use crate::model::RegistrySnapshot;
use crate::problem::{Location, Problem};
use check::Checker;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::path::{Path, PathBuf};
use text::{parser_problem, to_u32};

#[cfg(test)]
use crate::model::{Endpoint, Protocol, Service, ServiceKey, ServicePort};
#[cfg(test)]
use std::collections::BTreeMap;
#[cfg(test)]
use std::net::IpAddr;

/// Why a registry file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read registry file {}: {source}", .path.display())]
    Read {
        /// The registry file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but is malformed or inconsistent.
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        /// The registry file.
        path: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let path = path.display();
    let lines: Vec<String> = problems.iter().map(|p| format!("{path}:{p}")).collect();
    lines.join("\n")
}

/// YAML nodes (maps, lists, scalars) a registry file may hold. The parser's
/// default (250,000) refuses a registry of 100,000 endpoints (three nodes
/// each); this admits about a million endpoints, while the parser's other
/// limits (aliases, anchors, depth, bytes) still stop YAML bombs.
pub const MAX_YAML_NODES: usize = 4_000_000;
/// Parser events a registry file may produce (about two per node).
pub const MAX_YAML_EVENTS: usize = 2 * MAX_YAML_NODES;

/// The parser's options: its defaults, with room for large registries.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_YAML_NODES;
    budget.max_events = MAX_YAML_EVENTS;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parses and validates a registry file's text; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<RegistrySnapshot, FileError> {
    let invalid = |problems| FileError::Invalid { path: path.to_path_buf(), problems };
    let raw: Option<RawFile> = match serde_saphyr::from_str_with_options(text, yaml_options()) {
        Ok(raw) => raw,
        Err(err) => return Err(invalid(vec![parser_problem(&err, text)])),
    };
    let raw = raw.unwrap_or_default();
    Checker::check(raw).map_err(invalid)
}

/// Reads and parses a registry file.
pub fn load(path: &Path) -> Result<RegistrySnapshot, FileError> {
    let bytes = read(path)?;
    parse_bytes(path, &bytes)
}

/// Reads a registry file's bytes (for [`parse_bytes`]).
pub fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Read { path: path.to_path_buf(), source })
}

/// [`parse`] for raw file content, which must be UTF-8.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<RegistrySnapshot, FileError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(path, text),
        Err(err) => {
            // Everything before the bad byte is valid text: point at it.
            // Lines break where YAML breaks them: `\n`, `\r\n` or a bare `\r`.
            let valid = String::from_utf8_lossy(bytes.get(..err.valid_up_to()).unwrap_or_default());
            let line = valid.matches('\n').count() + valid.replace("\r\n", "\n").matches('\r').count() + 1;
            let column = valid.rsplit(['\n', '\r']).next().map_or(0, |l| l.chars().count()) + 1;
            let problem = Problem {
                at: Location::Text { line: to_u32(line as u64), column: to_u32(column as u64) },
                message: format!(
                    "the file is not valid UTF-8 (bad byte at offset {}): save it as UTF-8",
                    err.valid_up_to()
                ),
            };
            Err(FileError::Invalid { path: path.to_path_buf(), problems: vec![problem] })
        }
    }
}

// ---------------------------------------------------------------------------
// The file's shape, as written.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    #[serde(default)]
    services: Option<Vec<Spanned<services::RawService>>>,
    #[serde(default)]
    routes: Option<Vec<Spanned<routes::RawRoutePolicy>>>,
    #[serde(default)]
    authorizations: Option<Vec<Spanned<authorizations::RawAuthorization>>>,
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests_authorizations;
#[cfg(test)]
mod tests_parse;
#[cfg(test)]
mod tests_read;
#[cfg(test)]
mod tests_routes;
#[cfg(test)]
mod tests_services;
