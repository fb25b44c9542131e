//! The plots of a bench run, written next to its report ([`super::results`]):
//! `latency.svg`, p50, p90 and p99 of every path at every rate (a panel per
//! table and percentile), and `cpu.svg`, the CPU µs per request (or message,
//! or connection) of each path's proxies together (a panel per table). The
//! figures are the tables' (medians over rounds; CPU pooled over rounds),
//! drawn as grouped bars with xtask's one chart renderer ([`crate::svg`]).

use super::loadgen::Mode;
use super::report::{Report, Section, Stats, Unit, Variant};
use crate::svg::{self, Axis, Panel, Series};

/// Picks a figure from a path's summary.
type Figure = fn(&Stats) -> Option<f64>;

/// A table's load modes as group names: `1000 req/s`, …, `max rate`.
fn groups(section: &Section) -> Vec<String> {
    section
        .scenarios
        .iter()
        .map(|sc| match sc.mode {
            Mode::Fixed(rate) => format!("{rate} {}", section.unit.rate()),
            Mode::Max => "max rate".into(),
        })
        .collect()
}

/// A panel of `section`: one series per path `keep` accepts, one bar per
/// load mode with the figure `f` picks; `None` when no path has a figure.
fn panel(
    section: &Section,
    title: String,
    keep: impl Fn(Variant) -> bool,
    f: impl Fn(&Stats) -> Option<f64>,
) -> Option<Panel> {
    let series: Vec<Series> = section
        .variants
        .iter()
        .copied()
        .filter(|v| keep(*v))
        .map(|v| Series {
            name: v.label().to_string(),
            points: section
                .scenarios
                .iter()
                .enumerate()
                .filter_map(|(i, sc)| Some((i as f64, f(&sc.stats(v))?)))
                .collect(),
        })
        .collect();
    series.iter().any(|s| !s.points.is_empty()).then(|| Panel { title, axis: Axis::Groups(groups(section)), series })
}

/// `latency.svg`: a panel per table and percentile (µs, lower is better).
pub fn latency(report: &Report) -> String {
    let percentiles: [(&str, Figure); 3] = [("p50", |s| s.p50_us), ("p90", |s| s.p90_us), ("p99", |s| s.p99_us)];
    let panels: Vec<Panel> = report
        .sections
        .iter()
        .flat_map(|section| {
            let what = if section.unit == Unit::Connection { "connection time" } else { "latency" };
            percentiles.iter().filter_map(move |(name, f)| {
                panel(section, format!("{}: {name} {what} (µs)", section.title), |_| true, f)
            })
        })
        .collect();
    svg::render("cargo xtask bench: latency per path (medians over rounds)", &panels, &[])
}

/// `cpu.svg`: a panel per table, the CPU µs per unit of each path's proxies
/// together (the baseline has none).
pub fn cpu(report: &Report) -> String {
    let panels: Vec<Panel> = report
        .sections
        .iter()
        .filter_map(|section| {
            let title = format!("{}: CPU µs per {}, all proxies of the path", section.title, section.unit.noun());
            panel(section, title, |v| v.proxies() > 0, |s| s.cpu_us[2])
        })
        .collect();
    svg::render("cargo xtask bench: proxy CPU per unit of load (all rounds pooled)", &panels, &[])
}

#[cfg(test)]
mod tests {
    use super::super::parse::Sample;
    use super::super::peers::Peer;
    use super::super::report::{Run, Scenario};
    use super::*;

    const B: Variant = Variant::Baseline;
    const M: Variant = Variant::MTLS;
    const E: Variant = Variant::Peer(Peer::Envoy);

    fn run(variant: Variant, p50: f64, p90: f64, p99: f64, ticks: u64) -> Run {
        let sample =
            Sample { ok: 1000, errors: 0, rps: 1000.0, p50_us: Some(p50), p90_us: Some(p90), p99_us: Some(p99) };
        Run {
            round: 1,
            variant,
            sample,
            cpu_ticks: [ticks, ticks, 1],
            peer_connections: None,
            spans: None,
            spans_dropped: None,
        }
    }

    fn report() -> Report {
        let scenario = |mode, scale: f64| Scenario {
            mode,
            tool: "t",
            connections: 16,
            runs: vec![
                run(B, 101.0 * scale, 102.0 * scale, 103.0 * scale, 0),
                run(M, 201.0 * scale, 202.0 * scale, 203.0 * scale, 10),
                run(E, 301.0 * scale, 302.0 * scale, 303.0 * scale, 30),
            ],
        };
        let section = Section {
            key: "grpc_stream".into(),
            title: "gRPC streaming: baseline vs mTLS mesh vs Envoy mTLS pair".into(),
            unit: Unit::Message,
            variants: vec![B, M, E],
            comparisons: vec![],
            scenarios: vec![scenario(Mode::Fixed(1000), 1.0), scenario(Mode::Max, 10.0)],
            memory: vec![],
            idle_memory: vec![],
            notes: vec![],
        };
        Report {
            duration_secs: 3,
            rounds: 1,
            proxy_threads: 1,
            cpus: 2,
            load_avg: ["0".into(), "0".into()],
            sections: vec![section],
        }
    }

    /// Catches a plot that drops a path, a percentile or a rate, plots the
    /// wrong figure (p99 where p90 belongs), or is not well-formed XML.
    #[test]
    fn latency_has_every_path_percentile_and_rate() {
        let svg = latency(&report());
        assert_eq!(svg::well_formed(&svg), Ok(()));
        for (p, offset) in [("p50", 1.0), ("p90", 2.0), ("p99", 3.0)] {
            assert!(svg.contains(&format!("{p} latency (µs)")), "no {p} panel");
            for (name, base) in [("baseline", 100.0), ("mTLS mesh", 200.0), ("Envoy mTLS pair", 300.0)] {
                for scale in [1.0, 10.0] {
                    let bar = format!("<title>{name}: {}</title>", svg::label((base + offset) * scale));
                    assert!(svg.contains(&bar), "missing {bar}");
                }
            }
        }
        assert!(svg.contains(">1000 msg/s</text>") && svg.contains(">max rate</text>"));
        assert_eq!(svg.matches("<title>").count(), 3 * 3 * 2, "3 percentiles × 3 paths × 2 rates");
    }

    /// Catches CPU plotted for the baseline (it has no proxy), a path or rate
    /// dropped, or one proxy's CPU where both belong.
    #[test]
    fn cpu_has_every_proxied_path() {
        let svg = cpu(&report());
        assert_eq!(svg::well_formed(&svg), Ok(()));
        // 10 ticks per proxy over 1000 messages: 2 × 10 × 10,000 µs / 1000 = 200 µs.
        let per = |ticks: f64| 2.0 * ticks * 1e6 / crate::procs::CLK_TCK as f64 / 1000.0;
        for (name, ticks) in [("mTLS mesh", 10.0), ("Envoy mTLS pair", 30.0)] {
            let bar = format!("<title>{name}: {}</title>", svg::label(per(ticks)));
            assert_eq!(svg.matches(&bar).count(), 2, "{bar} at both rates");
        }
        assert!(!svg.contains("<title>baseline"), "the baseline has no proxy");
        assert!(svg.contains("CPU µs per message"));
    }
}
