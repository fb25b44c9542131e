//! Benchmark results: per-run data, summaries over rounds, and their
//! rendering as a table or a JSON document.

use super::loadgen::{Mode, Proto};
use super::parse::Sample;
use super::procs::{CLK_TCK, Memory};
use serde_json::{Value, json};

/// Which path a run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Load generator → nginx.
    Baseline,
    /// Load generator → client proxy → server proxy → nginx.
    Mesh,
}

/// One load-generator run.
#[derive(Debug, Clone)]
pub struct Run {
    /// 1-based round.
    pub round: u32,
    /// Baseline or mesh.
    pub variant: Variant,
    /// What the load generator reported.
    pub sample: Sample,
    /// CPU ticks used during the run by the client proxy, the server proxy and nginx.
    pub cpu_ticks: [u64; 3],
}

/// All runs of one protocol and load mode.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Fixed rate or max rate.
    pub mode: Mode,
    /// The load generator used.
    pub tool: &'static str,
    /// Runs in the order they were made.
    pub runs: Vec<Run>,
}

/// Everything measured for one protocol.
#[derive(Debug, Clone)]
pub struct ProtoResult {
    /// The protocol.
    pub proto: Proto,
    /// Fixed-rate and max-rate scenarios.
    pub scenarios: Vec<Scenario>,
    /// Client and server proxy memory after all runs.
    pub memory: [Memory; 2],
}

/// The benchmark's settings and results.
#[derive(Debug, Clone)]
pub struct Report {
    /// Seconds per run.
    pub duration_secs: u64,
    /// Rounds of (baseline, mesh).
    pub rounds: u32,
    /// Connections per run.
    pub connections: u32,
    /// Proxy worker threads.
    pub proxy_threads: usize,
    /// Results per protocol.
    pub results: Vec<ProtoResult>,
}

const PROXIES: [&str; 2] = ["client proxy", "server proxy"];

/// A scenario summarised over its rounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Median over rounds of the baseline's and the mesh's p50, and of their per-round difference (µs).
    pub p50: [Option<f64>; 3],
    /// The same for p99.
    pub p99: [Option<f64>; 3],
    /// Median requests/s of baseline and mesh, and median per-round ratio mesh/baseline.
    pub rps: [Option<f64>; 3],
    /// CPU µs per successful mesh request, client and server proxy (all rounds pooled).
    pub cpu_us_per_request: [Option<f64>; 2],
    /// nginx's CPU µs per successful request, baseline and mesh: a yardstick
    /// for what one request costs a lean server on this machine.
    pub nginx_cpu_us_per_request: [Option<f64>; 2],
    /// Failed requests, baseline and mesh, all rounds.
    pub errors: [u64; 2],
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

impl Scenario {
    fn pairs(&self) -> Vec<(&Sample, &Sample)> {
        let find = |round, variant| self.runs.iter().find(|r| r.round == round && r.variant == variant);
        let rounds = self.runs.iter().map(|r| r.round).max().unwrap_or(0);
        (1..=rounds)
            .filter_map(|r| Some((&find(r, Variant::Baseline)?.sample, &find(r, Variant::Mesh)?.sample)))
            .collect()
    }

    /// Medians over rounds, paired differences and pooled CPU per request.
    pub fn summary(&self) -> Summary {
        let pairs = self.pairs();
        let stat = |f: fn(&Sample) -> Option<f64>, diff: fn(f64, f64) -> f64| {
            [
                median(pairs.iter().filter_map(|(b, _)| f(b)).collect()),
                median(pairs.iter().filter_map(|(_, m)| f(m)).collect()),
                median(pairs.iter().filter_map(|(b, m)| Some(diff(f(m)?, f(b)?))).collect()),
            ]
        };
        let cpu = |i: usize, variant| {
            let runs = self.runs.iter().filter(|r| r.variant == variant);
            let (ticks, ok) = runs.fold((0, 0), |(t, n), r| (t + r.cpu_ticks[i], n + r.sample.ok));
            (ok > 0).then(|| ticks as f64 * 1e6 / CLK_TCK as f64 / ok as f64)
        };
        let errors = |v| self.runs.iter().filter(|r| r.variant == v).map(|r| r.sample.errors).sum();
        Summary {
            p50: stat(|s| s.p50_us, |m, b| m - b),
            p99: stat(|s| s.p99_us, |m, b| m - b),
            rps: stat(|s| Some(s.rps).filter(|r| *r > 0.0), |m, b| m / b),
            cpu_us_per_request: [cpu(0, Variant::Mesh), cpu(1, Variant::Mesh)],
            nginx_cpu_us_per_request: [cpu(2, Variant::Baseline), cpu(2, Variant::Mesh)],
            errors: [errors(Variant::Baseline), errors(Variant::Mesh)],
        }
    }

    fn label(&self, connections: u32) -> String {
        match self.mode {
            Mode::Fixed(rate) => format!("{rate} req/s, {connections} conns, {}", self.tool),
            Mode::Max => format!("max rate, {connections} conns, {}", self.tool),
        }
    }
}

fn us(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() < 1e3 => format!("{v:.0} µs"),
        Some(v) if v.abs() < 1e6 => format!("{:.2} ms", v / 1e3),
        Some(v) => format!("{:.2} s", v / 1e6),
    }
}

fn delta_us(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 0.0 => format!("+{}", us(Some(v))),
        v => us(v),
    }
}

fn rps(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1e4 => format!("{:.1}k/s", v / 1e3),
        Some(v) => format!("{v:.0}/s"),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Report {
    /// The results as a human-readable table.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 6]> = Vec::new();
        let head = ["protocol", "scenario", "metric", "baseline", "mesh", "mesh vs baseline"];
        for result in &self.results {
            let proto = result.proto.label();
            let mut row = |scenario: &str, metric: &str, b: String, m: String, d: String| {
                rows.push([proto.into(), scenario.into(), metric.into(), b, m, d]);
            };
            for sc in &result.scenarios {
                let s = sc.summary();
                let name = sc.label(self.connections);
                if let Mode::Max = sc.mode {
                    let ratio = s.rps[2].map_or("-".into(), |r| format!("x{r:.3}"));
                    row(&name, "throughput", rps(s.rps[0]), rps(s.rps[1]), ratio);
                }
                if s.p50[..2] != [None, None] || s.p99[..2] != [None, None] {
                    row(&name, "p50 latency", us(s.p50[0]), us(s.p50[1]), delta_us(s.p50[2]));
                    row(&name, "p99 latency", us(s.p99[0]), us(s.p99[1]), delta_us(s.p99[2]));
                }
                let cpu = |v: Option<f64>| v.map_or("-".into(), |c| format!("{c:.1} µs"));
                for (i, proxy) in PROXIES.iter().enumerate() {
                    row(&name, &format!("CPU/request, {proxy}"), "".into(), cpu(s.cpu_us_per_request[i]), "".into());
                }
                let [b, m] = s.nginx_cpu_us_per_request;
                row(&name, "CPU/request, nginx", cpu(b), cpu(m), "(yardstick)".into());
                if s.errors != [0, 0] {
                    row(&name, "failed requests", s.errors[0].to_string(), s.errors[1].to_string(), "".into());
                }
            }
            for (i, proxy) in PROXIES.iter().enumerate() {
                let m = result.memory[i];
                let peak = format!("peak {}", mib(m.hwm_kib));
                row("after all runs", &format!("RSS, {proxy}"), "".into(), mib(m.rss_kib), peak);
            }
        }
        let mut widths = head.map(|h| h.chars().count());
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 6]| {
            let [a, b, c, d, e, f] = cells;
            let [wa, wb, wc, wd, we, _] = widths;
            format!("{a:<wa$}  {b:<wb$}  {c:<wc$}  {d:>wd$}  {e:>we$}  {f}").trim_end().to_string() + "\n"
        };
        let mut out = format!(
            "{} s per run, {} rounds of (baseline, mesh) interleaved; medians over rounds, deltas are medians of \
             per-round differences; CPU/request pools all mesh rounds; proxy threads: {}\n\n",
            self.duration_secs, self.rounds, self.proxy_threads
        );
        out += &line(head);
        let mut last = String::new();
        for r in &rows {
            if r[0] != last && !last.is_empty() {
                out.push('\n');
            }
            last = r[0].clone();
            out += &line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
        }
        out
    }

    /// The settings, every run and the summaries as JSON.
    pub fn json(&self) -> Value {
        let results: Vec<Value> = self.results.iter().map(|r| self.proto_json(r)).collect();
        json!({
            "settings": {
                "duration_secs": self.duration_secs,
                "rounds": self.rounds,
                "connections": self.connections,
                "proxy_threads": self.proxy_threads,
                "clk_tck": CLK_TCK,
            },
            "results": results,
        })
    }

    fn proto_json(&self, r: &ProtoResult) -> Value {
        let mem = |m: Memory| json!({ "rss_kib": m.rss_kib, "hwm_kib": m.hwm_kib });
        let scenarios: Vec<Value> = r
            .scenarios
            .iter()
            .map(|sc| {
                let s = sc.summary();
                let runs: Vec<Value> = sc
                    .runs
                    .iter()
                    .map(|run| {
                        json!({
                            "round": run.round,
                            "variant": match run.variant { Variant::Baseline => "baseline", Variant::Mesh => "mesh" },
                            "ok": run.sample.ok,
                            "errors": run.sample.errors,
                            "rps": run.sample.rps,
                            "p50_us": run.sample.p50_us,
                            "p99_us": run.sample.p99_us,
                            "cpu_ticks": {
                                "client_proxy": run.cpu_ticks[0],
                                "server_proxy": run.cpu_ticks[1],
                                "nginx": run.cpu_ticks[2],
                            },
                        })
                    })
                    .collect();
                let (mode, rate) = match sc.mode {
                    Mode::Fixed(rate) => ("fixed_rate", Some(rate)),
                    Mode::Max => ("max_rate", None),
                };
                json!({
                    "mode": mode,
                    "rate": rate,
                    "tool": sc.tool,
                    "summary": {
                        "p50_us": { "baseline": s.p50[0], "mesh": s.p50[1], "added": s.p50[2] },
                        "p99_us": { "baseline": s.p99[0], "mesh": s.p99[1], "added": s.p99[2] },
                        "rps": { "baseline": s.rps[0], "mesh": s.rps[1], "ratio": s.rps[2] },
                        "cpu_us_per_request": {
                            "client_proxy": s.cpu_us_per_request[0],
                            "server_proxy": s.cpu_us_per_request[1],
                            "nginx_baseline": s.nginx_cpu_us_per_request[0],
                            "nginx_mesh": s.nginx_cpu_us_per_request[1],
                        },
                        "errors": { "baseline": s.errors[0], "mesh": s.errors[1] },
                    },
                    "runs": runs,
                })
            })
            .collect();
        json!({
            "protocol": r.proto.key(),
            "scenarios": scenarios,
            "memory": { "client_proxy": mem(r.memory[0]), "server_proxy": mem(r.memory[1]) },
        })
    }
}

#[cfg(test)]
mod tests;
