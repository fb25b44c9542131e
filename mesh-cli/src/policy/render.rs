//! `meshctl policy explain` for people.

use super::explain::{Authorization, Explanation, Routing};
use std::fmt::Write as _;

/// A duration in milliseconds, short: `250ms`, `2s`, `1.5s`, `5m`, `1h30m`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms % 1000 != 0 {
        return format!("{}s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, 0) => format!("{h}h{m}m"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

fn percent(p: f64) -> String {
    let s = format!("{p:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

fn limit(n: u32) -> String {
    if n == 0 { "unlimited".into() } else { n.to_string() }
}

const W: usize = 16;

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{label:<W$}{value}");
}

/// The explanation as text.
pub fn human(e: &Explanation) -> String {
    let mut out = String::new();
    let o = &e.outbound;
    let proto = if o.http { "" } else { " (opaque TCP)" };
    line(&mut out, "target", format!("{} → service {}{proto}", e.target, o.service));
    let mut req = format!("{} {}  (authority {})", e.request.method, e.request.path, e.request.authority);
    for (n, v) in &e.request.headers {
        let _ = write!(req, "\n{:W$}{n}: {v}", "");
    }
    line(&mut out, "request", req);
    let client = match &e.client {
        None => "not given (--from or --from-unauthenticated): no verdict".to_string(),
        Some(c) => match &c.identity {
            Some(id) => format!("{id} (mTLS)"),
            None => format!("unauthenticated, from {}", c.ip),
        },
    };
    line(&mut out, "client", client);
    line(&mut out, "policies from", &e.from);
    out.push('\n');
    routing(&mut out, o);
    out.push('\n');
    let _ = writeln!(out, "authorization at the destination");
    for a in &e.authorization {
        authorization(&mut out, a);
    }
    if !e.notes.is_empty() {
        out.push('\n');
        for n in &e.notes {
            let _ = writeln!(out, "note: {n}");
        }
    }
    out
}

fn routing(out: &mut String, o: &Routing) {
    if !o.http {
        line(
            out,
            "route",
            "none: an opaque TCP port is not routed per request (no routes, timeouts, retries, faults or rate limits)",
        );
    } else {
        match &o.route {
            Some(r) => {
                line(out, "route", &r.name);
                let why = match r.why.match_index {
                    Some(i) => format!("match #{}: {}", i + 1, r.why.description),
                    None => r.why.description.clone(),
                };
                line(out, "  why", why);
            }
            None if o.routes.is_empty() => {
                line(out, "route", "none: no route policy for this service port: default behaviour")
            }
            None => line(out, "route", "none matched: default behaviour (the service itself, no timeout, no retries)"),
        }
        let skipped: Vec<&str> = o.routes.iter().filter(|r| !r.matched).map(|r| r.name.as_str()).collect();
        if !skipped.is_empty() {
            line(out, "  not matched", skipped.join(", "));
        }
    }
    let mut backends = String::new();
    for (i, b) in o.backends.iter().enumerate() {
        if i > 0 {
            let _ = write!(backends, "\n{:W$}", "");
        }
        let itself = if b.is_target { "  (the target service)" } else { "" };
        let _ = write!(backends, "{:>7}  {}{itself}", percent(b.percent), b.target);
        if !b.is_target {
            let _ = write!(backends, "  (weight {})", b.weight);
        }
    }
    line(out, "backends", backends);
    line(out, "timeout", o.timeout_ms.map_or_else(|| "none".to_string(), duration));
    let retries = match &o.retry {
        None => "none".to_string(),
        Some(r) => {
            let mut s = format!(
                "up to {} on {}; backoff {}..{}",
                r.max_retries,
                if r.on.is_empty() { "nothing".to_string() } else { r.on.join(", ") },
                duration(r.backoff_base_ms),
                duration(r.backoff_max_ms)
            );
            if let Some(p) = r.per_try_timeout_ms {
                let _ = write!(s, "; per try {}", duration(p));
            }
            let _ = write!(s, "; bodies up to {} replayed", bytes(r.buffer_limit_bytes));
            s
        }
    };
    line(out, "retries", retries);
    let b = &o.retry_budget;
    line(
        out,
        "retry budget",
        format!(
            "{} of requests + {}/s, over {}",
            percent(b.retry_ratio * 100.0),
            b.min_retries_per_second,
            duration(b.ttl_ms)
        ),
    );
    let faults = match &o.fault {
        None => "none".to_string(),
        Some(f) => {
            let mut parts = Vec::new();
            if f.abort_percent > 0.0 {
                let grpc = f.abort_grpc_status.map(|g| format!(" (gRPC: status {g})")).unwrap_or_default();
                parts.push(format!("abort {} with {}{grpc}", percent(f.abort_percent), f.abort_http_status));
            }
            if f.delay_percent > 0.0 {
                parts.push(format!("delay {} by {}", percent(f.delay_percent), duration(f.delay_ms)));
            }
            parts.join("; ")
        }
    };
    line(out, "faults", faults);
    let rate = match &o.rate_limit {
        None => "none".to_string(),
        Some(r) => format!("{}/s per calling proxy, burst {}", r.requests_per_second, r.burst),
    };
    line(out, "rate limit", rate);
    let c = &o.circuit_breaker;
    let breaker = if c.enabled {
        format!(
            "eject an endpoint after {} consecutive failures, for {} doubling up to {}",
            c.consecutive_failures,
            duration(c.base_ejection_ms),
            duration(c.max_ejection_ms)
        )
    } else {
        "off".to_string()
    };
    line(out, "circuit breaker", breaker);
    let l = &o.limits;
    line(
        out,
        "limits",
        format!(
            "concurrent {}, pending {}, connections per endpoint {}",
            limit(l.max_concurrent_requests),
            limit(l.max_pending_requests),
            limit(l.max_connections_per_endpoint)
        ),
    );
}

fn authorization(out: &mut String, a: &Authorization) {
    let workload = match (&a.namespace, &a.service_account) {
        (Some(ns), Some(sa)) => format!(" → {ns}/{sa}"),
        _ => String::new(),
    };
    let ports = match a.ports.as_slice() {
        [] => String::new(),
        [one] => format!(" port {one}"),
        many => format!(" ports {}", many.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")),
    };
    let _ = writeln!(out, "  {}{workload}{ports}", a.backend);
    match (&a.policy, &a.verdict) {
        (None, _) => {
            let _ = writeln!(out, "    no policy enforced");
        }
        (Some(p), v) => {
            let mtls = if a.require_mtls { ", mTLS required" } else { "" };
            let _ = writeln!(out, "    policy {p} (default {}{mtls})", a.default.as_deref().unwrap_or("allow"));
            for r in &a.rules {
                let _ = writeln!(out, "      rule {}: {}", r.name, r.requires);
            }
            if let Some(v) = v {
                let word = if v.allowed { "ALLOWED" } else { "DENIED" };
                let by = if v.rule.starts_with("default:") || v.rule == "require-mtls" {
                    format!("by {} ({})", v.policy, v.rule)
                } else {
                    format!("by {}, rule {}", v.policy, v.rule)
                };
                let _ = writeln!(out, "    {word} {by}");
            }
        }
    }
    for n in &a.notes {
        let _ = writeln!(out, "    note: {n}");
    }
}
