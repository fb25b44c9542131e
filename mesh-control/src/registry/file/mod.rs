//! The file registry (universal mode): services, ports and endpoints in one
//! YAML file, validated as a whole and reloaded when the file changes.
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
//! ```
//!
//! A file is accepted whole or not at all: [`parse`] reports every problem it
//! finds, each with its line and column, and [`FileRegistry`] keeps the last
//! good registry in force while a rejected file is being fixed.

use crate::metrics::RegistryMetrics;
use crate::registry::model::{
    Endpoint, Protocol, RegistrySnapshot, Service, ServiceKey, ServicePort,
};
use crate::store::Store;
use mesh_core::shutdown::Shutdown;
use serde::Deserialize;
use serde_saphyr::{Location, MessageFormatter, Spanned};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The registry name used in metrics.
const REGISTRY: &str = "file";
/// Namespace of services that name none.
const DEFAULT_NAMESPACE: &str = "default";
/// Endpoint weight when the file gives none.
const DEFAULT_WEIGHT: u32 = 100;
/// Largest endpoint weight.
const MAX_WEIGHT: u32 = 1_000_000;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;
/// Longest user value quoted back in a message.
const MAX_QUOTED_CHARS: usize = 64;
/// Shortest poll interval (the timer refuses a zero period).
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// How long after its modification time a file is re-read on every poll, even
/// when its metadata looks unchanged: two writes within one tick of the
/// filesystem's clock can leave identical mtime, size and inode.
const RACY_WINDOW: Duration = Duration::from_secs(3);

/// One problem in a registry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending text.
    pub line: u32,
    /// 1-based column of the offending text.
    pub column: u32,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

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

/// Parses and validates a registry file's text; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<RegistrySnapshot, FileError> {
    let invalid = |problems| FileError::Invalid { path: path.to_path_buf(), problems };
    let raw: Option<RawFile> = match serde_saphyr::from_str(text) {
        Ok(raw) => raw,
        Err(err) => return Err(invalid(vec![parser_problem(&err, text)])),
    };
    let mut checker = Checker::default();
    for service in raw.and_then(|r| r.services).unwrap_or_default() {
        checker.service(service);
    }
    checker.finish().map_err(invalid)
}

/// Reads and parses a registry file.
pub fn load(path: &Path) -> Result<RegistrySnapshot, FileError> {
    let bytes = read(path)?;
    parse_bytes(path, &bytes)
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Read { path: path.to_path_buf(), source })
}

/// [`parse`] for raw file content, which must be UTF-8.
fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<RegistrySnapshot, FileError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(path, text),
        Err(err) => {
            // Everything before the bad byte is valid text: point at it.
            let valid = String::from_utf8_lossy(bytes.get(..err.valid_up_to()).unwrap_or_default());
            let line = valid.matches('\n').count() + 1;
            let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let problem = Problem {
                line: to_u32(line as u64),
                column: to_u32(column as u64),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    #[serde(default)]
    services: Option<Vec<Spanned<RawService>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    name: Spanned<String>,
    #[serde(default)]
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    service_account: Option<Spanned<String>>,
    #[serde(default)]
    addresses: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    #[serde(default)]
    endpoints: Option<Vec<Spanned<RawEndpoint>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPort {
    // Wider than u16 so that an out-of-range port is a precise problem of ours.
    port: Spanned<i64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    target_port: Option<Spanned<i64>>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEndpoint {
    #[serde(default)]
    address: Option<Spanned<String>>,
    #[serde(default)]
    ip: Option<Spanned<String>>,
    #[serde(default)]
    weight: Option<Spanned<i64>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

// ---------------------------------------------------------------------------
// Parser errors.

/// One problem for a syntax or type error, at the parser's location, worded
/// for someone editing the file.
fn parser_problem(err: &serde_saphyr::Error, text: &str) -> Problem {
    use serde_saphyr::Error as E;
    let location = err.location();
    let (line, column) = location.map_or((1, 1), |l| (to_u32(l.line()), to_u32(l.column())));
    let token = location.and_then(|l| token_at(text, l));
    let message = match innermost(err) {
        E::InvalidScalar { ty, .. } if is_integer_type(ty) => match token {
            Some(t) if !is_null(t) => format!("expected a whole number, found {}", quote(t)),
            _ => "expected a whole number here, found nothing".to_string(),
        },
        E::Unexpected { expected: "string scalar", .. } => {
            match token.and_then(|t| t.chars().next()) {
                Some('[') => "expected a single value, found a list: quote values that start \
                              with '[', as in address: \"[::1]:4243\""
                    .to_string(),
                Some('{') => "expected a single value, found a mapping".to_string(),
                _ => "expected a single value here".to_string(),
            }
        }
        E::Unexpected { expected: "sequence start", .. } => {
            "expected a list here (`- item` lines, or [a, b])".to_string()
        }
        E::Unexpected { expected: "mapping start", .. } => {
            "expected a mapping of `key: value` pairs here".to_string()
        }
        E::SerdeUnknownField { field, expected, .. } => {
            format!("unknown field {}, expected one of {}", quote(field), expected.join(", "))
        }
        E::SerdeMissingField { field, .. } => format!("missing required field {}", quote(field)),
        E::DuplicateMappingKey { key: Some(key), .. } => {
            format!("duplicate key {}: keep only one", quote(key))
        }
        E::NullIntoString { .. } => "expected a value here, found nothing".to_string(),
        E::MultipleDocuments { .. } => "the file holds more than one YAML document: remove the \
                                        `---` separators and list every service under one \
                                        `services:`"
            .to_string(),
        other => serde_saphyr::UserMessageFormatter.format_message(other).into_owned(),
    };
    Problem { line, column, message: escape_controls(&message) }
}

/// The error itself, without snippet or alias wrappers.
fn innermost(err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match err {
        serde_saphyr::Error::WithSnippet { error, .. }
        | serde_saphyr::Error::AliasError { error, .. } => innermost(error),
        other => other,
    }
}

/// The source text a location spans, when the parser knows its byte range.
fn token_at(text: &str, location: Location) -> Option<&str> {
    let span = location.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    text.get(start..start.checked_add(len)?)
}

fn is_integer_type(ty: &str) -> bool {
    matches!(ty, "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128")
}

fn is_null(token: &str) -> bool {
    matches!(token.trim(), "" | "~" | "null" | "Null" | "NULL")
}

// ---------------------------------------------------------------------------
// Semantic checks.

/// Builds the snapshot while collecting every problem.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    services: Vec<Service>,
    /// Line where each service was first defined.
    service_lines: HashMap<ServiceKey, u32>,
    /// Virtual `ip:port`s claimed so far: the claiming service and the line.
    vips: HashMap<SocketAddr, (ServiceKey, u32)>,
}

impl Checker {
    fn problem(&mut self, at: &Location, message: String) {
        let message = escape_controls(&message);
        self.problems.push(Problem {
            line: to_u32(at.line()),
            column: to_u32(at.column()),
            message,
        });
    }

    fn finish(mut self) -> Result<RegistrySnapshot, Vec<Problem>> {
        if self.problems.is_empty() {
            return Ok(RegistrySnapshot { services: self.services });
        }
        self.problems.sort_by_key(|p| (p.line, p.column));
        Err(self.problems)
    }

    fn service(&mut self, raw: Spanned<RawService>) {
        let at = raw.referenced;
        let raw = raw.value;
        self.dns_label("service name", &raw.name);
        let namespace = match &raw.namespace {
            Some(ns) => {
                self.dns_label("namespace", ns);
                ns.value.clone()
            }
            None => DEFAULT_NAMESPACE.to_string(),
        };
        let service_account = match &raw.service_account {
            Some(sa) => {
                self.dns_label("serviceAccount", sa);
                sa.value.clone()
            }
            None => raw.name.value.clone(),
        };

        let key = ServiceKey::new(namespace, raw.name.value.clone());
        let line = to_u32(raw.name.referenced.line());
        let duplicate = match self.service_lines.get(&key) {
            Some(first) => {
                let message = format!(
                    "duplicate service {} in namespace {} (first defined on line {first}): \
                     give each service a unique name within its namespace",
                    quote(&key.name),
                    quote(&key.namespace)
                );
                self.problem(&raw.name.referenced, message);
                true
            }
            None => {
                self.service_lines.insert(key.clone(), line);
                false
            }
        };

        let addresses = self.addresses(raw.addresses.unwrap_or_default());
        let (ports, port_entries) = self.ports(&at, &key, raw.ports);
        if !duplicate {
            // A duplicate is already an error; its claims would only repeat it.
            self.claim_vips(&key, &addresses, &ports);
        }
        let endpoints = self.endpoints(raw.endpoints.unwrap_or_default(), &ports, port_entries);
        self.services.push(Service {
            key,
            addresses: addresses.into_iter().map(|(ip, _)| ip).collect(),
            ports,
            service_account,
            endpoints,
        });
    }

    fn dns_label(&mut self, what: &str, value: &Spanned<String>) {
        if let Some(why) = dns_label_error(&value.value) {
            let message = format!(
                "invalid {what} {}: {why}; use a DNS label: lowercase letters, digits and '-', \
                 starting and ending with a letter or digit, at most {MAX_LABEL_LEN} characters",
                quote(&value.value)
            );
            self.problem(&value.referenced, message);
        }
    }

    /// Valid, distinct virtual IPs with where each was written.
    fn addresses(&mut self, raw: Vec<Spanned<String>>) -> Vec<(IpAddr, Location)> {
        let mut out: Vec<(IpAddr, Location)> = Vec::new();
        for addr in raw {
            match addr.value.trim().parse::<IpAddr>() {
                Ok(ip) => match out.iter().find(|(seen, _)| *seen == ip) {
                    Some((_, first)) => {
                        let message = format!(
                            "duplicate virtual address {ip} (first listed on line {}): \
                             list each address once",
                            first.line()
                        );
                        self.problem(&addr.referenced, message);
                    }
                    None => out.push((ip, addr.referenced)),
                },
                Err(err) => {
                    let message = format!(
                        "virtual address {} is not an IP address: {err}; write a bare IP \
                         such as 10.96.0.10 (ports come from \"ports\")",
                        quote(&addr.value)
                    );
                    self.problem(&addr.referenced, message);
                }
            }
        }
        out
    }

    /// Valid ports, and how many port entries the file lists.
    fn ports(
        &mut self,
        service_at: &Location,
        key: &ServiceKey,
        raw: Option<Spanned<Vec<Spanned<RawPort>>>>,
    ) -> (Vec<ServicePort>, usize) {
        let no_ports = format!(
            "service {} has no ports: list at least one under \"ports\" (- port: 8080)",
            quote(&key.name)
        );
        let Some(raw) = raw else {
            self.problem(service_at, no_ports);
            return (Vec::new(), 0);
        };
        if raw.value.is_empty() {
            self.problem(&raw.referenced, no_ports);
            return (Vec::new(), 0);
        }
        let entries = raw.value.len();
        let mut ports: Vec<ServicePort> = Vec::new();
        let mut lines: HashMap<u16, u32> = HashMap::new();
        for entry in raw.value {
            let entry = entry.value;
            let port = self.port_number("port", &entry.port);
            let target_port = match &entry.target_port {
                Some(target) => self.port_number("targetPort", target),
                None => port,
            };
            let protocol = match &entry.protocol {
                Some(p) => self.protocol(p),
                None => Some(Protocol::Detect),
            };
            let Some(port) = port else { continue };
            if let Some(first) = lines.get(&port) {
                let message = format!(
                    "duplicate port {port} (first defined on line {first}): list each port once"
                );
                self.problem(&entry.port.referenced, message);
                continue;
            }
            lines.insert(port, to_u32(entry.port.referenced.line()));
            if let (Some(target_port), Some(protocol)) = (target_port, protocol) {
                ports.push(ServicePort { port, name: entry.name, target_port, protocol });
            }
        }
        (ports, entries)
    }

    fn port_number(&mut self, field: &str, value: &Spanned<i64>) -> Option<u16> {
        match u16::try_from(value.value) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                let message = format!("{field} {} is out of range: use 1-65535", value.value);
                self.problem(&value.referenced, message);
                None
            }
        }
    }

    fn protocol(&mut self, value: &Spanned<String>) -> Option<Protocol> {
        match value.value.as_str() {
            "detect" => Some(Protocol::Detect),
            "http" | "http1" => Some(Protocol::Http1),
            "http2" | "grpc" => Some(Protocol::Http2),
            "opaque" | "tcp" => Some(Protocol::Opaque),
            other => {
                let message = format!(
                    "unknown protocol {}: use detect, http, http1, http2, grpc, opaque or tcp",
                    quote(other)
                );
                self.problem(&value.referenced, message);
                None
            }
        }
    }

    /// Claims each `vip:port` of a service, reporting those another service
    /// already holds.
    fn claim_vips(
        &mut self,
        key: &ServiceKey,
        addresses: &[(IpAddr, Location)],
        ports: &[ServicePort],
    ) {
        for (ip, at) in addresses {
            for port in ports {
                let vip = SocketAddr::new(*ip, port.port);
                match self.vips.get(&vip) {
                    Some((owner, line)) => {
                        let message = format!(
                            "virtual address {vip} is already claimed by service {} in \
                             namespace {} (line {line}): give each service its own address or port",
                            quote(&owner.name),
                            quote(&owner.namespace)
                        );
                        self.problem(at, message);
                    }
                    None => {
                        self.vips.insert(vip, (key.clone(), to_u32(at.line())));
                    }
                }
            }
        }
    }

    fn endpoints(
        &mut self,
        raw: Vec<Spanned<RawEndpoint>>,
        ports: &[ServicePort],
        port_entries: usize,
    ) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        // Every address an endpoint is reached at, and the line listing it.
        let mut seen: HashMap<SocketAddr, u32> = HashMap::new();
        for entry in raw {
            let at = entry.referenced;
            let entry = entry.value;
            let (target, written_at) = match (&entry.address, &entry.ip) {
                (Some(_), Some(_)) => {
                    self.problem(
                        &at,
                        "endpoint has both \"address\" and \"ip\": keep one (\"address\" for \
                         ip:port, \"ip\" to use each port's targetPort)"
                            .to_string(),
                    );
                    (None, at)
                }
                (None, None) => {
                    self.problem(
                        &at,
                        "endpoint has neither \"address\" nor \"ip\": add one (address: \
                         10.0.0.5:8080, or ip: 10.0.0.5)"
                            .to_string(),
                    );
                    (None, at)
                }
                (Some(address), None) => {
                    (self.endpoint_address(address, port_entries), address.referenced)
                }
                (None, Some(ip)) => (self.endpoint_ip(ip), ip.referenced),
            };
            let weight = match &entry.weight {
                Some(w) => self.weight(w),
                None => Some(DEFAULT_WEIGHT),
            };
            let (Some((ip, port)), Some(weight)) = (target, weight) else { continue };
            let endpoint = Endpoint { ip, port, weight, labels: entry.labels.unwrap_or_default() };

            let reached_at: Vec<SocketAddr> = match port {
                Some(port) => vec![SocketAddr::new(ip, port)],
                // Port 0 stands for "this IP" while the ports are unusable.
                None if ports.is_empty() => vec![SocketAddr::new(ip, 0)],
                None => ports.iter().map(|p| endpoint.addr_for(p)).collect(),
            };
            let clash = reached_at.iter().find_map(|a| seen.get(a).map(|line| (*a, *line)));
            if let Some((addr, first)) = clash {
                let shown = if addr.port() == 0 { addr.ip().to_string() } else { addr.to_string() };
                let message = format!(
                    "duplicate endpoint address {shown} (first listed on line {first}): \
                     list each replica once"
                );
                self.problem(&written_at, message);
                continue;
            }
            let line = to_u32(written_at.line());
            for addr in reached_at {
                seen.entry(addr).or_insert(line);
            }
            endpoints.push(endpoint);
        }
        endpoints
    }

    fn endpoint_address(
        &mut self,
        address: &Spanned<String>,
        port_entries: usize,
    ) -> Option<(IpAddr, Option<u16>)> {
        let text = address.value.trim();
        let addr = match text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                let message = format!(
                    "endpoint address {} does not parse as ip:port: {}",
                    quote(&address.value),
                    explain_socket_addr(text)
                );
                self.problem(&address.referenced, message);
                return None;
            }
        };
        if addr.port() == 0 {
            let message =
                format!("endpoint address {} has port 0: use 1-65535", quote(&address.value));
            self.problem(&address.referenced, message);
            return None;
        }
        if port_entries > 1 {
            let message = format!(
                "endpoint address {} gives a port, which only fits a service with exactly one \
                 port, and this one has {port_entries}: write ip: {} instead so each port's \
                 targetPort applies",
                quote(&address.value),
                addr.ip()
            );
            self.problem(&address.referenced, message);
            return None;
        }
        Some((addr.ip(), Some(addr.port())))
    }

    fn endpoint_ip(&mut self, ip: &Spanned<String>) -> Option<(IpAddr, Option<u16>)> {
        let text = ip.value.trim();
        match text.parse::<IpAddr>() {
            Ok(parsed) => Some((parsed, None)),
            Err(err) => {
                let hint = if text.parse::<SocketAddr>().is_ok() {
                    "; it includes a port: use \"address\" for ip:port"
                } else {
                    ""
                };
                let message =
                    format!("endpoint ip {} is not an IP address: {err}{hint}", quote(&ip.value));
                self.problem(&ip.referenced, message);
                None
            }
        }
    }

    fn weight(&mut self, weight: &Spanned<i64>) -> Option<u32> {
        match u32::try_from(weight.value) {
            Ok(w) if w <= MAX_WEIGHT => Some(w),
            _ => {
                let message = format!(
                    "weight {} is out of range: use 0-{MAX_WEIGHT} (0 drains the endpoint)",
                    weight.value
                );
                self.problem(&weight.referenced, message);
                None
            }
        }
    }
}

/// Why a value is not a DNS-1123 label, if it is not.
fn dns_label_error(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("it is empty".to_string());
    }
    if let Some(c) =
        value.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(if c.is_ascii_uppercase() {
            format!("it contains the uppercase letter {c:?}")
        } else {
            format!("it contains {c:?}")
        });
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Some("it starts or ends with '-'".to_string());
    }
    if value.len() > MAX_LABEL_LEN {
        return Some(format!("it is {} characters long", value.len()));
    }
    None
}

/// A specific reason why `text` is not an `ip:port`.
fn explain_socket_addr(text: &str) -> String {
    if unbracket(text).parse::<IpAddr>().is_ok() {
        return "it has no port: add one (10.0.0.5:8080, or [::1]:8080 for IPv6), or use \"ip\" \
                so each port's targetPort applies"
            .to_string();
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return "expected ip:port, as in 10.0.0.5:8080 or [::1]:8080".to_string();
    };
    let ip = match unbracket(host).parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            return format!("{} is not an IP address (host names are not supported)", quote(host));
        }
    };
    if ip.is_ipv6() && !host.starts_with('[') {
        return "write an IPv6 address with a port in brackets, as in [::1]:4243".to_string();
    }
    if port.is_empty() {
        return "the port is missing after ':'".to_string();
    }
    if port.bytes().all(|b| b.is_ascii_digit()) {
        return format!("port {port} is out of range: use 1-65535");
    }
    format!("the port {} is not a number", quote(port))
}

/// `text` without surrounding brackets, if it has them.
fn unbracket(text: &str) -> &str {
    text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text)
}

/// A user value for a message: quoted, escaped, and cut short when long.
fn quote(value: &str) -> String {
    if value.chars().count() <= MAX_QUOTED_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(MAX_QUOTED_CHARS).collect();
    format!("{head:?}...")
}

/// Escapes control characters so that one problem stays on one line.
fn escape_controls(message: &str) -> String {
    if !message.chars().any(char::is_control) {
        return message.to_string();
    }
    message
        .chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

fn to_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------
// Watching.

/// Serves a registry file: loads it, then polls for changes.
///
/// A change is recognised by the file's metadata (modification time, size,
/// inode), so an editor's rename-over-write and an in-place rewrite are both
/// seen. New content is applied once two consecutive polls read the same bytes,
/// so a half-written file (say, truncated and not yet rewritten) is never
/// served; a change therefore reaches the store within two poll intervals.
pub struct FileRegistry {
    path: PathBuf,
    poll_interval: Duration,
    store: Store,
    metrics: RegistryMetrics,
    watch: WatchState,
}

/// What the poller knows about the file.
#[derive(Default)]
struct WatchState {
    /// Metadata at the last read.
    stamp: Option<Stamp>,
    /// The last read's file was modified so recently that its metadata may not
    /// reveal the next change: read again even if the metadata is unchanged.
    recheck: bool,
    /// New content read once, applied if the next poll reads it again.
    pending: Option<Vec<u8>>,
    /// What the last load attempt was about.
    attempted: Attempt,
    /// The content of the registry in force.
    applied: Option<Vec<u8>>,
}

/// The subject of the last load attempt.
#[derive(Default, PartialEq, Eq)]
enum Attempt {
    /// None yet.
    #[default]
    None,
    /// The file could not be read.
    Unreadable,
    /// This content (accepted or rejected).
    Content(Vec<u8>),
}

/// File metadata that changes whenever the content may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self { modified: meta.modified().ok(), len: meta.len(), dev: meta.dev(), ino: meta.ino() }
    }

    /// Whether another write could still leave the same stamp.
    fn is_racy(&self) -> bool {
        match self.modified {
            Some(modified) => match SystemTime::now().duration_since(modified) {
                Ok(age) => age < RACY_WINDOW,
                // Modified "in the future": the clocks disagree, trust nothing.
                Err(_) => true,
            },
            None => true,
        }
    }
}

impl fmt::Debug for FileRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRegistry")
            .field("path", &self.path)
            .field("poll_interval", &self.poll_interval)
            .field("stamp", &self.watch.stamp)
            .field("pending", &self.watch.pending.as_ref().map(Vec::len))
            .field("applied", &self.watch.applied.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl FileRegistry {
    /// A registry serving `path` into `store`, checking it every `poll_interval`.
    pub fn new(
        path: impl Into<PathBuf>,
        poll_interval: Duration,
        store: Store,
        metrics: RegistryMetrics,
    ) -> Self {
        Self { path: path.into(), poll_interval, store, metrics, watch: WatchState::default() }
    }

    /// Loads the file into the store; the control plane refuses to start on error.
    pub fn load_initial(&mut self) -> Result<(), FileError> {
        let result = self.read_stamped().and_then(|(stamp, bytes)| {
            parse_bytes(&self.path, &bytes).map(|snapshot| (stamp, bytes, snapshot))
        });
        match result {
            Ok((stamp, bytes, snapshot)) => {
                self.store.replace_all(&snapshot);
                self.metrics.reload_ok(REGISTRY, &snapshot);
                tracing::info!(
                    path = %self.path.display(),
                    services = snapshot.services.len(),
                    endpoints = snapshot.endpoint_count(),
                    "registry loaded"
                );
                self.watch = WatchState {
                    stamp: Some(stamp),
                    recheck: stamp.is_racy(),
                    pending: None,
                    attempted: Attempt::Content(bytes.clone()),
                    applied: Some(bytes),
                };
                Ok(())
            }
            Err(err) => {
                self.metrics.reload_failed(REGISTRY);
                Err(err)
            }
        }
    }

    /// Polls until shutdown; a changed valid file replaces the store's content,
    /// an invalid or missing one is logged (with every problem) and counted,
    /// and the last good registry stays.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(self.poll_interval.max(MIN_POLL_INTERVAL));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.triggered() => break,
                _ = ticks.tick() => self.poll_once(),
            }
        }
        tracing::debug!(path = %self.path.display(), "registry file watch stopped");
    }

    /// Metadata (taken first, so that a write racing the read shows up as a
    /// change next time) and content.
    fn read_stamped(&self) -> Result<(Stamp, Vec<u8>), FileError> {
        let meta = std::fs::metadata(&self.path)
            .map_err(|source| FileError::Read { path: self.path.clone(), source })?;
        Ok((Stamp::of(&meta), read(&self.path)?))
    }

    /// One check of the file. Reads are synchronous: a registry file is small
    /// and local, and a stat every poll costs microseconds.
    fn poll_once(&mut self) {
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(source) => return self.unreadable(source),
        };
        let stamp = Stamp::of(&meta);
        let w = &self.watch;
        if w.stamp == Some(stamp) && w.pending.is_none() && !w.recheck {
            return;
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(source) => return self.unreadable(source),
        };
        self.watch.stamp = Some(stamp);
        self.watch.recheck = stamp.is_racy();
        if matches!(&self.watch.attempted, Attempt::Content(last) if *last == bytes) {
            self.watch.pending = None;
            return;
        }
        if self.watch.pending.as_ref() != Some(&bytes) {
            // First sight of this content: it may be half written.
            self.watch.pending = Some(bytes);
            return;
        }
        self.watch.pending = None;
        self.reload(bytes);
    }

    fn reload(&mut self, bytes: Vec<u8>) {
        match parse_bytes(&self.path, &bytes) {
            Ok(snapshot) => {
                let unchanged = self.watch.applied.as_ref() == Some(&bytes);
                if !unchanged {
                    self.store.replace_all(&snapshot);
                    self.watch.applied = Some(bytes.clone());
                }
                self.metrics.reload_ok(REGISTRY, &snapshot);
                tracing::info!(
                    path = %self.path.display(),
                    services = snapshot.services.len(),
                    endpoints = snapshot.endpoint_count(),
                    unchanged,
                    "registry reloaded"
                );
            }
            Err(err) => {
                self.metrics.reload_failed(REGISTRY);
                tracing::error!(
                    path = %self.path.display(),
                    "registry file rejected, keeping the last good registry:\n{err}"
                );
            }
        }
        self.watch.attempted = Attempt::Content(bytes);
    }

    /// The file is gone or unreadable: report it once, keep serving the last
    /// good registry, and load the file again once it is back.
    fn unreadable(&mut self, source: std::io::Error) {
        self.watch.stamp = None;
        self.watch.pending = None;
        self.watch.recheck = false;
        if self.watch.attempted == Attempt::Unreadable {
            return;
        }
        self.watch.attempted = Attempt::Unreadable;
        self.metrics.reload_failed(REGISTRY);
        let err = FileError::Read { path: self.path.clone(), source };
        tracing::error!("{err}; keeping the last good registry");
    }
}

#[cfg(test)]
mod tests;
