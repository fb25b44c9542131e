//! The per-pod annotations that change what is injected, parsed strictly:
//! an unknown `config.mesh.dev/` key or a malformed value is an error naming
//! the annotation and what it accepts (a typo must not silently inject
//! something else, or nothing).

use super::Defaults;
use std::collections::BTreeMap;

/// The prefix of the override annotations.
pub const PREFIX: &str = "config.mesh.dev/";

const SKIP_INBOUND: &str = "config.mesh.dev/skip-inbound-ports";
const SKIP_OUTBOUND: &str = "config.mesh.dev/skip-outbound-ports";
const OPAQUE: &str = "config.mesh.dev/opaque-ports";
const CPU_REQUEST: &str = "config.mesh.dev/proxy-cpu-request";
const MEMORY_REQUEST: &str = "config.mesh.dev/proxy-memory-request";
const CPU_LIMIT: &str = "config.mesh.dev/proxy-cpu-limit";
const MEMORY_LIMIT: &str = "config.mesh.dev/proxy-memory-limit";
const LOG_LEVEL: &str = "config.mesh.dev/proxy-log-level";
/// `"false"` leaves the app's probes as they are (they then reach the app
/// only where plaintext is accepted: permissive mode or skipped ports).
pub const REWRITE_PROBES: &str = "config.mesh.dev/rewrite-app-probes";
const KNOWN: &[&str] = &[
    SKIP_INBOUND,
    SKIP_OUTBOUND,
    OPAQUE,
    CPU_REQUEST,
    MEMORY_REQUEST,
    CPU_LIMIT,
    MEMORY_LIMIT,
    LOG_LEVEL,
    REWRITE_PROBES,
];

/// A pod's injection settings after its annotations are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overrides {
    /// Inbound ports iptables leaves alone.
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports iptables leaves alone.
    pub skip_outbound_ports: Vec<u16>,
    /// App ports the proxy never sniffs (server-first protocols).
    pub opaque_ports: Vec<u16>,
    /// Resources and log level.
    pub resources: Defaults,
    /// Whether the app's kubelet probes go through the proxy's admin port.
    pub rewrite_app_probes: bool,
}

/// An annotation injection cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?}: {problem}")]
pub struct InjectError {
    /// The annotation's key.
    pub annotation: String,
    /// Its value.
    pub value: String,
    /// What is wrong and what it accepts.
    pub problem: String,
}

fn error(annotation: &str, value: &str, problem: impl Into<String>) -> InjectError {
    InjectError { annotation: annotation.into(), value: value.into(), problem: problem.into() }
}

/// `enabled` → inject, `disabled` → do not, absent → undecided.
pub(super) fn inject_choice(value: Option<&String>, whose: &str) -> Result<Option<bool>, InjectError> {
    match value.map(|v| v.trim()) {
        None => Ok(None),
        Some("enabled") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(other) => {
            Err(error(super::INJECT_ANNOTATION, other, format!("the {whose} takes `enabled` or `disabled`")))
        }
    }
}

impl Overrides {
    /// Applies a pod's `config.mesh.dev/*` annotations over `defaults`.
    pub fn parse(annotations: &BTreeMap<String, String>, defaults: &Defaults) -> Result<Self, InjectError> {
        let mut out = Self {
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            opaque_ports: Vec::new(),
            resources: defaults.clone(),
            rewrite_app_probes: true,
        };
        for (key, value) in annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
            let v = value.trim();
            match key.as_str() {
                SKIP_INBOUND => out.skip_inbound_ports = ports(key, v)?,
                SKIP_OUTBOUND => out.skip_outbound_ports = ports(key, v)?,
                OPAQUE => out.opaque_ports = ports(key, v)?,
                CPU_REQUEST => out.resources.cpu_request = quantity(key, v)?,
                MEMORY_REQUEST => out.resources.memory_request = quantity(key, v)?,
                CPU_LIMIT => out.resources.cpu_limit = Some(quantity(key, v)?),
                MEMORY_LIMIT => out.resources.memory_limit = Some(quantity(key, v)?),
                LOG_LEVEL => out.resources.log_level = log_level(key, v)?,
                REWRITE_PROBES => {
                    out.rewrite_app_probes = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(error(key, value, "takes \"true\" or \"false\"")),
                    }
                }
                _ => {
                    return Err(error(
                        key,
                        value,
                        format!("unknown annotation; the known ones are {}", KNOWN.join(", ")),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// `80,443,8080-8090` → the ports, sorted and deduplicated.
fn ports(key: &str, value: &str) -> Result<Vec<u16>, InjectError> {
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
        match (parse(lo), parse(hi)) {
            (Some(lo), Some(hi)) if lo <= hi && usize::from(hi - lo) < 4096 => out.extend(lo..=hi),
            _ => {
                return Err(error(
                    key,
                    value,
                    format!(
                        "{part:?} is not a port (1-65535) or a range LOW-HIGH of at most 4096; write e.g. 3306,8000-8010"
                    ),
                ));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A Kubernetes resource quantity (`100m`, `0.5`, `64Mi`, `1G`, `1e3`).
fn quantity(key: &str, value: &str) -> Result<String, InjectError> {
    let digits_end = value.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let number_ok = !number.is_empty() && number.matches('.').count() <= 1 && number != ".";
    let suffix_ok =
        matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
            || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
                let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
            });
    if number_ok && suffix_ok {
        Ok(value.to_string())
    } else {
        Err(error(key, value, "not a Kubernetes quantity; write e.g. 100m, 0.5, 64Mi or 1Gi"))
    }
}

/// A `MESH_LOG` filter: `LEVEL` or `target=LEVEL`, comma-separated.
fn log_level(key: &str, value: &str) -> Result<String, InjectError> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let valid = !value.is_empty()
        && value.split(',').all(|part| {
            let (target, level) = part.rsplit_once('=').unwrap_or(("", part));
            LEVELS.contains(&level) && target.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        });
    if valid {
        Ok(value.to_string())
    } else {
        Err(error(
            key,
            value,
            "not a log filter; write a level (off, error, warn, info, debug, trace) or target=level, comma-separated",
        ))
    }
}
