//! Benchmark results: per-run data, summaries over rounds, comparisons
//! between the paths measured in the same rounds, and their rendering as
//! tables (one per section) or a JSON document with the same content.

use super::loadgen::Mode;
use super::parse::Sample;
use super::peers::Peer;
use crate::procs::{CLK_TCK, Memory};
use format::{cpu, delta_cpu, delta_us, layout, mib, rate, ratio, us};
use serde_json::{Value, json};

/// Which path a run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Load generator → nginx.
    Baseline,
    /// Load generator → client proxy → server proxy → nginx.
    Mesh {
        /// Identity and mTLS between the proxies.
        tls: bool,
        /// Both proxies export a span per request to an OTLP receiver.
        tracing: bool,
    },
    /// Load generator → a reference proxy (or pair) → nginx.
    Peer(Peer),
}

impl Variant {
    /// The mesh without identity.
    pub const PLAINTEXT: Variant = Variant::Mesh { tls: false, tracing: false };
    /// The mesh with identity and mTLS.
    pub const MTLS: Variant = Variant::Mesh { tls: true, tracing: false };

    /// The same mesh with tracing on.
    pub fn traced(self) -> Variant {
        match self {
            Variant::Baseline | Variant::Peer(_) => self,
            Variant::Mesh { tls, .. } => Variant::Mesh { tls, tracing: true },
        }
    }

    /// A column heading.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Mesh { tls: false, tracing: false } => "plaintext mesh",
            Variant::Mesh { tls: true, tracing: false } => "mTLS mesh",
            Variant::Mesh { tls: false, tracing: true } => "plaintext + tracing",
            Variant::Mesh { tls: true, tracing: true } => "mTLS + tracing",
            Variant::Peer(p) => p.label(),
        }
    }

    /// A short name, for comparisons.
    pub fn short(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Mesh { tls: false, tracing: false } => "plaintext",
            Variant::Mesh { tls: true, tracing: false } => "mTLS",
            Variant::Mesh { tls: false, tracing: true } => "plaintext+tracing",
            Variant::Mesh { tls: true, tracing: true } => "mTLS+tracing",
            Variant::Peer(p) => p.short(),
        }
    }

    /// The name used in JSON.
    pub fn key(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Mesh { tls: false, tracing: false } => "plaintext",
            Variant::Mesh { tls: true, tracing: false } => "mtls",
            Variant::Mesh { tls: false, tracing: true } => "plaintext_tracing",
            Variant::Mesh { tls: true, tracing: true } => "mtls_tracing",
            Variant::Peer(p) => p.key(),
        }
    }

    /// Proxies on the path (their CPU is read in the first slots of
    /// [`Run::cpu_ticks`]): 0 for the baseline, 1 for a one-hop peer, 2 for a pair.
    pub fn proxies(self) -> usize {
        match self {
            Variant::Baseline => 0,
            Variant::Mesh { .. } => 2,
            Variant::Peer(p) => p.proxies(),
        }
    }

    fn is_traced(self) -> bool {
        matches!(self, Variant::Mesh { tracing: true, .. })
    }
}

/// What one unit of load is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// An HTTP request (on pooled connections).
    Request,
    /// A new TCP connection carrying one request.
    Connection,
    /// A message on a gRPC stream, and its echo.
    Message,
}

impl Unit {
    /// One unit, in words.
    pub fn noun(self) -> &'static str {
        match self {
            Unit::Request => "request",
            Unit::Connection => "connection",
            Unit::Message => "message",
        }
    }

    /// Units per second, abbreviated.
    pub fn rate(self) -> &'static str {
        match self {
            Unit::Request => "req/s",
            Unit::Connection => "conn/s",
            Unit::Message => "msg/s",
        }
    }
}

/// One load-generator run.
#[derive(Debug, Clone)]
pub struct Run {
    /// 1-based round.
    pub round: u32,
    /// The path measured.
    pub variant: Variant,
    /// What the load generator reported.
    pub sample: Sample,
    /// CPU ticks used during the run by the client proxy, the server proxy
    /// and nginx (proxies: 0 where the path has none; a one-hop peer's
    /// proxy counts as the client proxy).
    pub cpu_ticks: [u64; 3],
    /// Connections the server proxy accepted from the client proxy during the run.
    pub peer_connections: Option<u64>,
    /// Spans the OTLP receiver got from this run (traced meshes).
    pub spans: Option<u64>,
    /// Spans the proxies dropped during the run (traced meshes).
    pub spans_dropped: Option<u64>,
}

/// All runs of one load mode in a section, interleaved over rounds.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Fixed rate or max rate.
    pub mode: Mode,
    /// The load generator used.
    pub tool: &'static str,
    /// Concurrent connections (or workers).
    pub connections: u32,
    /// Runs in the order they were made.
    pub runs: Vec<Run>,
}

/// One table: a protocol or scenario, every path measured in the same rounds.
#[derive(Debug, Clone)]
pub struct Section {
    /// The name used in JSON, e.g. `http1`, `handshake`, `tracing_http1`.
    pub key: String,
    /// The table's title.
    pub title: String,
    /// What one unit of load is.
    pub unit: Unit,
    /// The paths measured, in column order.
    pub variants: Vec<Variant>,
    /// (subject, reference) pairs shown as deltas and ratios.
    pub comparisons: Vec<(Variant, Variant)>,
    /// Fixed-rate and max-rate scenarios.
    pub scenarios: Vec<Scenario>,
    /// Each path's client and server proxy memory after all runs (a
    /// one-hop peer has no server proxy).
    pub memory: Vec<(Variant, [Option<Memory>; 2])>,
    /// The same, read once every path was up and before any load (its
    /// proxies have served nothing: with identity, holding a certificate).
    pub idle_memory: Vec<(Variant, [Option<Memory>; 2])>,
    /// Caveats printed under the table.
    pub notes: Vec<String>,
}

/// The benchmark's settings and results.
#[derive(Debug, Clone)]
pub struct Report {
    /// Seconds per run.
    pub duration_secs: u64,
    /// Rounds per scenario.
    pub rounds: u32,
    /// Proxy worker threads.
    pub proxy_threads: usize,
    /// CPUs of this machine.
    pub cpus: usize,
    /// `/proc/loadavg` at the start and the end.
    pub load_avg: [String; 2],
    /// One entry per table.
    pub sections: Vec<Section>,
}

/// One path in one scenario, summarised over its rounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Median over rounds of p50 latency (µs).
    pub p50_us: Option<f64>,
    /// Median over rounds of p90 latency (µs), when the tool reports it.
    pub p90_us: Option<f64>,
    /// Median over rounds of p99 latency (µs).
    pub p99_us: Option<f64>,
    /// Median over rounds of the completed rate (per second).
    pub rate: Option<f64>,
    /// CPU µs per successful unit, all rounds pooled: client proxy, server
    /// proxy, both proxies, nginx. No proxy figure for the baseline.
    pub cpu_us: [Option<f64>; 4],
    /// Successful units, all rounds.
    pub ok: u64,
    /// Failed units, all rounds.
    pub errors: u64,
    /// Proxy-to-proxy connections opened, all rounds (meshes).
    pub peer_connections: Option<u64>,
    /// Spans received, all rounds (traced meshes).
    pub spans: Option<u64>,
    /// Spans the proxies dropped, all rounds (traced meshes).
    pub spans_dropped: Option<u64>,
}

impl Stats {
    /// Proxy-to-proxy connections per successful unit.
    pub fn peer_connections_per_unit(&self) -> Option<f64> {
        self.peer_connections.filter(|_| self.ok > 0).map(|n| n as f64 / self.ok as f64)
    }

    /// Spans received per successful unit.
    pub fn spans_per_unit(&self) -> Option<f64> {
        self.spans.filter(|_| self.ok > 0).map(|n| n as f64 / self.ok as f64)
    }
}

/// A subject path against a reference path of the same scenario.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Median of per-round differences of p50 (µs).
    pub p50_us: Option<f64>,
    /// Median of per-round differences of p99 (µs).
    pub p99_us: Option<f64>,
    /// Median of per-round ratios of the completed rate, subject / reference.
    pub rate_ratio: Option<f64>,
    /// Added CPU µs per unit: client proxy, server proxy, both proxies (a
    /// baseline has no proxy: it counts as 0).
    pub cpu_us: [Option<f64>; 3],
    /// Both proxies' CPU per unit, subject / reference (two meshes only).
    pub cpu_ratio: Option<f64>,
}

/// The median, or `None` for no values.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn sum_some(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.fold(None, |acc, v| match (acc, v) {
        (None, v) => v,
        (acc, None) => acc,
        (Some(a), Some(b)) => Some(a + b),
    })
}

impl Scenario {
    fn runs_of(&self, v: Variant) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(move |r| r.variant == v)
    }

    /// Pooled CPU µs per successful unit of process `i` on path `v`.
    fn cpu(&self, v: Variant, i: usize) -> Option<f64> {
        let (ticks, ok) = self.runs_of(v).fold((0, 0), |(t, n), r| (t + r.cpu_ticks[i], n + r.sample.ok));
        (ok > 0).then(|| ticks as f64 * 1e6 / CLK_TCK as f64 / ok as f64)
    }

    /// `v`'s figures over its rounds.
    pub fn stats(&self, v: Variant) -> Stats {
        let med = |f: fn(&Sample) -> Option<f64>| median(self.runs_of(v).filter_map(|r| f(&r.sample)).collect());
        let proxies = |i| if i < v.proxies() { self.cpu(v, i) } else { None };
        let both = match (proxies(0), proxies(1), v.proxies()) {
            (Some(c), Some(s), _) => Some(c + s),
            (Some(c), None, 1) => Some(c),
            _ => None,
        };
        Stats {
            p50_us: med(|s| s.p50_us),
            p90_us: med(|s| s.p90_us),
            p99_us: med(|s| s.p99_us),
            rate: med(|s| Some(s.rps).filter(|r| *r > 0.0)),
            cpu_us: [proxies(0), proxies(1), both, self.cpu(v, 2)],
            ok: self.runs_of(v).map(|r| r.sample.ok).sum(),
            errors: self.runs_of(v).map(|r| r.sample.errors).sum(),
            peer_connections: sum_some(self.runs_of(v).map(|r| r.peer_connections)),
            spans: sum_some(self.runs_of(v).map(|r| r.spans)),
            spans_dropped: sum_some(self.runs_of(v).map(|r| r.spans_dropped)),
        }
    }

    /// `subject` against `reference`: latency and rate paired by round, CPU pooled.
    pub fn delta(&self, subject: Variant, reference: Variant) -> Delta {
        let rounds = self.runs.iter().map(|r| r.round).max().unwrap_or(0);
        let find = |round, v| self.runs.iter().find(|r| r.round == round && r.variant == v).map(|r| &r.sample);
        let pairs: Vec<(&Sample, &Sample)> =
            (1..=rounds).filter_map(|r| Some((find(r, subject)?, find(r, reference)?))).collect();
        let paired = |f: fn(&Sample) -> Option<f64>, combine: fn(f64, f64) -> f64| {
            median(pairs.iter().filter_map(|(s, r)| Some(combine(f(s)?, f(r)?))).collect())
        };
        let (s, r) = (self.stats(subject), self.stats(reference));
        let added = |i: usize| {
            let base = if reference.proxies() > 0 { r.cpu_us[i] } else { Some(0.0) };
            Some(s.cpu_us[i]? - base?)
        };
        let cpu_ratio = match (s.cpu_us[2], r.cpu_us[2]) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        Delta {
            p50_us: paired(|x| x.p50_us, |a, b| a - b),
            p99_us: paired(|x| x.p99_us, |a, b| a - b),
            rate_ratio: paired(|x| Some(x.rps).filter(|v| *v > 0.0), |a, b| a / b),
            cpu_us: [added(0), added(1), added(2)],
            cpu_ratio,
        }
    }

    fn label(&self, unit: Unit) -> String {
        let what = match unit {
            Unit::Request => "conns",
            Unit::Message => "streams",
            Unit::Connection => "workers",
        };
        match self.mode {
            Mode::Fixed(rate) => format!("{rate} {}, {}", unit.rate(), self.tool),
            Mode::Max => format!("max rate, {} {what}, {}", self.connections, self.tool),
        }
    }
}

const PROXIES: [&str; 3] = ["client proxy", "server proxy", "both proxies"];

impl Section {
    /// The section as an aligned table, then its notes.
    pub fn table(&self) -> String {
        let cmp_names: Vec<String> =
            self.comparisons.iter().map(|(s, r)| format!("{} vs {}", s.short(), r.short())).collect();
        let mut head = vec!["scenario".to_string(), "metric".to_string()];
        head.extend(self.variants.iter().map(|v| v.label().to_string()));
        head.extend(cmp_names);
        let mut rows: Vec<Option<Vec<String>>> = vec![Some(head)];
        let noun = self.unit.noun();
        for sc in &self.scenarios {
            rows.push(None);
            let stats: Vec<Stats> = self.variants.iter().map(|&v| sc.stats(v)).collect();
            let deltas: Vec<Delta> = self.comparisons.iter().map(|&(s, r)| sc.delta(s, r)).collect();
            let mut first = true;
            let mut row = |metric: String, values: Vec<String>, compared: Vec<String>| {
                let scenario = if std::mem::take(&mut first) { sc.label(self.unit) } else { String::new() };
                let mut r = vec![scenario, metric];
                r.extend(values);
                r.extend(compared);
                rows.push(Some(r));
            };
            let each = |f: &dyn Fn(&Stats) -> String| stats.iter().map(f).collect::<Vec<_>>();
            let vs = |f: &dyn Fn(&Delta) -> String| deltas.iter().map(f).collect::<Vec<_>>();
            if let Mode::Max = sc.mode {
                let what = match self.unit {
                    Unit::Request | Unit::Message => "throughput",
                    Unit::Connection => "new connections",
                };
                row(what.into(), each(&|s| rate(s.rate)), vs(&|d| ratio(d.rate_ratio)));
            }
            if stats.iter().any(|s| s.p50_us.is_some() || s.p99_us.is_some()) {
                let what = match self.unit {
                    Unit::Request | Unit::Message => "latency",
                    Unit::Connection => "connection time",
                };
                row(format!("p50 {what}"), each(&|s| us(s.p50_us)), vs(&|d| delta_us(d.p50_us)));
                row(format!("p99 {what}"), each(&|s| us(s.p99_us)), vs(&|d| delta_us(d.p99_us)));
            }
            for (i, proxy) in PROXIES.iter().enumerate() {
                let compared = vs(&|d| match (i, d.cpu_ratio) {
                    (2, Some(r)) => format!("{} ({})", delta_cpu(d.cpu_us[i]), ratio(Some(r))),
                    _ => delta_cpu(d.cpu_us[i]),
                });
                row(format!("CPU/{noun}, {proxy}"), each(&|s| cpu(s.cpu_us[i])), compared);
            }
            row(format!("CPU/{noun}, nginx"), each(&|s| cpu(s.cpu_us[3])), vec![]);
            if self.unit == Unit::Connection {
                let per = |s: &Stats| s.peer_connections_per_unit().map_or("-".into(), |v| format!("{v:.2}"));
                row("proxy conns/connection".into(), each(&per), vec![]);
            }
            if self.variants.iter().any(|v| v.is_traced()) {
                let spans = |s: &Stats| match (s.spans, s.spans_per_unit()) {
                    (Some(n), Some(per)) => format!("{n} ({per:.2}/{noun})"),
                    (Some(n), None) => n.to_string(),
                    _ => "-".into(),
                };
                row("spans received".into(), each(&spans), vec![]);
                row("spans dropped".into(), each(&|s| s.spans_dropped.map_or("-".into(), |n| n.to_string())), vec![]);
            }
            if stats.iter().any(|s| s.errors > 0) {
                row(format!("failed {noun}s"), each(&|s| s.errors.to_string()), vec![]);
            }
        }
        for (when, memory) in [("idle, before load", &self.idle_memory), ("after all runs", &self.memory)] {
            if memory.is_empty() {
                continue;
            }
            rows.push(None);
            for (i, proxy) in PROXIES[..2].iter().enumerate() {
                let mut r = vec![if i == 0 { when.to_string() } else { String::new() }];
                r.push(format!("RSS (peak), {proxy}"));
                for v in &self.variants {
                    let m = memory.iter().find(|(mv, _)| mv == v).and_then(|(_, m)| m[i]);
                    r.push(m.map_or("-".into(), |m| format!("{} ({})", mib(m.rss_kib), mib(m.hwm_kib))));
                }
                rows.push(Some(r));
            }
        }
        let mut out = format!("== {} ==\n", self.title);
        out += &layout(&rows, 2);
        for note in &self.notes {
            out += &format!("note: {note}\n");
        }
        out
    }

    fn json(&self) -> Value {
        let mem = |m: Option<Memory>| m.map(|m| json!({ "rss_kib": m.rss_kib, "hwm_kib": m.hwm_kib }));
        let scenarios: Vec<Value> = self
            .scenarios
            .iter()
            .map(|sc| {
                let variants: serde_json::Map<String, Value> =
                    self.variants.iter().map(|&v| (v.key().to_string(), stats_json(&sc.stats(v)))).collect();
                let comparisons: Vec<Value> = self
                    .comparisons
                    .iter()
                    .map(|&(s, r)| {
                        let d = sc.delta(s, r);
                        json!({
                            "subject": s.key(),
                            "reference": r.key(),
                            "p50_us_added": d.p50_us,
                            "p99_us_added": d.p99_us,
                            "rate_ratio": d.rate_ratio,
                            "cpu_us_added": {
                                "client_proxy": d.cpu_us[0],
                                "server_proxy": d.cpu_us[1],
                                "proxies": d.cpu_us[2],
                            },
                            "proxies_cpu_ratio": d.cpu_ratio,
                        })
                    })
                    .collect();
                let runs: Vec<Value> = sc.runs.iter().map(run_json).collect();
                let (mode, rate) = match sc.mode {
                    Mode::Fixed(rate) => ("fixed_rate", Some(rate)),
                    Mode::Max => ("max_rate", None),
                };
                json!({
                    "mode": mode,
                    "rate": rate,
                    "tool": sc.tool,
                    "connections": sc.connections,
                    "variants": variants,
                    "comparisons": comparisons,
                    "runs": runs,
                })
            })
            .collect();
        let by_variant = |memory: &[(Variant, [Option<Memory>; 2])]| -> serde_json::Map<String, Value> {
            memory
                .iter()
                .map(|(v, m)| (v.key().to_string(), json!({ "client_proxy": mem(m[0]), "server_proxy": mem(m[1]) })))
                .collect()
        };
        let (memory, idle_memory) = (by_variant(&self.memory), by_variant(&self.idle_memory));
        json!({
            "key": self.key,
            "title": self.title,
            "unit": self.unit.noun(),
            "variants": self.variants.iter().map(|v| v.key()).collect::<Vec<_>>(),
            "scenarios": scenarios,
            "memory": memory,
            "idle_memory": idle_memory,
            "notes": self.notes,
        })
    }
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "p50_us": s.p50_us,
        "p90_us": s.p90_us,
        "p99_us": s.p99_us,
        "rate": s.rate,
        "cpu_us_per_unit": {
            "client_proxy": s.cpu_us[0],
            "server_proxy": s.cpu_us[1],
            "proxies": s.cpu_us[2],
            "nginx": s.cpu_us[3],
        },
        "ok": s.ok,
        "errors": s.errors,
        "peer_connections": s.peer_connections,
        "peer_connections_per_unit": s.peer_connections_per_unit(),
        "spans": s.spans,
        "spans_per_unit": s.spans_per_unit(),
        "spans_dropped": s.spans_dropped,
    })
}

fn run_json(run: &Run) -> Value {
    json!({
        "round": run.round,
        "variant": run.variant.key(),
        "ok": run.sample.ok,
        "errors": run.sample.errors,
        "rate": run.sample.rps,
        "p50_us": run.sample.p50_us,
        "p90_us": run.sample.p90_us,
        "p99_us": run.sample.p99_us,
        "cpu_ticks": {
            "client_proxy": run.cpu_ticks[0],
            "server_proxy": run.cpu_ticks[1],
            "nginx": run.cpu_ticks[2],
        },
        "peer_connections": run.peer_connections,
        "spans": run.spans,
        "spans_dropped": run.spans_dropped,
    })
}

impl Report {
    /// The results as human-readable tables, one per section.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} s per run, {} round(s); in each round every path of a table runs once, in an order rotated from \
             round to round.\nFigures are medians over rounds; deltas (+) and ratios (x) are medians of per-round \
             comparisons with the path named, measured in the same rounds. CPU per request or connection pools \
             all rounds of a path (the fixed-rate figure is the steadiest); proxy threads: {}.\n\
             Machine: {} CPU(s), load average {} at the start, {} at the end: other work on the machine adds noise.\n",
            self.duration_secs, self.rounds, self.proxy_threads, self.cpus, self.load_avg[0], self.load_avg[1]
        );
        for section in &self.sections {
            out.push('\n');
            out += &section.table();
        }
        out
    }

    /// The settings, every run, the summaries and the comparisons as JSON.
    pub fn json(&self) -> Value {
        json!({
            "settings": {
                "duration_secs": self.duration_secs,
                "rounds": self.rounds,
                "proxy_threads": self.proxy_threads,
                "clk_tck": CLK_TCK,
                "cpus": self.cpus,
                "load_avg": { "start": self.load_avg[0], "end": self.load_avg[1] },
            },
            "sections": self.sections.iter().map(Section::json).collect::<Vec<_>>(),
        })
    }
}

pub mod format;
#[cfg(test)]
mod tests;
