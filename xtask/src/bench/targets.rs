//! The performance issue's targets, as ratios to Envoy's mTLS pair measured
//! in the same rounds: CPU per request (both proxies) ours ÷ Envoy at each
//! fixed rate, added p99 ours − direct, max rate ours ÷ Envoy, RSS per
//! proxy. A markdown table per protocol, read from the report's sections.

use super::loadgen::Mode;
use super::peers::Peer;
use super::report::format::delta_us as plus;
use super::report::{Section, Unit, Variant};
use crate::procs::Memory;

const OURS: Variant = Variant::MTLS;
const ENVOY: Variant = Variant::Peer(Peer::Envoy);

/// One row: what, ours, Envoy's, the ratio or difference, the target.
type Row = [String; 5];

fn times(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("×{r:.2}"))
}

fn cpu(v: Option<f64>) -> String {
    v.map_or("-".into(), |c| format!("{c:.0} µs"))
}

fn rate(v: Option<f64>, unit: Unit) -> String {
    v.map_or("-".into(), |r| format!("{:.1}k {}", r / 1e3, unit.rate()))
}

/// `a / b`, when both are known and `b` is not 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// The bound on each proxy's RSS when idle with mTLS, in MiB.
pub const IDLE_RSS_TARGET_MIB: f64 = 10.0;

/// The largest RSS (MiB) of a path's proxies in `memory`.
fn largest_mib(memory: &[(Variant, [Option<Memory>; 2])], v: Variant) -> Option<f64> {
    let (_, m) = memory.iter().find(|(mv, _)| *mv == v)?;
    m.iter().flatten().map(|m| m.rss_kib as f64 / 1024.0).reduce(f64::max)
}

/// The largest RSS (MiB) of a path's proxies after all runs.
fn rss_mib(section: &Section, v: Variant) -> Option<f64> {
    largest_mib(&section.memory, v)
}

/// Whether `value` meets `≤ bound`, for the target column; unknown when not measured.
fn verdict(value: Option<f64>, bound: f64) -> &'static str {
    match value {
        Some(v) if v <= bound => "met",
        Some(_) => "NOT met",
        None => "not measured",
    }
}

/// The rows for one section, or none if it lacks our mTLS mesh or Envoy's pair.
pub fn rows(section: &Section) -> Vec<Row> {
    if !(section.variants.contains(&OURS) && section.variants.contains(&ENVOY)) {
        return Vec::new();
    }
    let (per, unit) = (section.unit.noun(), section.unit.rate());
    let mut rows = Vec::new();
    for sc in &section.scenarios {
        let (ours, envoy) = (sc.stats(OURS), sc.stats(ENVOY));
        match sc.mode {
            Mode::Fixed(r) => {
                rows.push([
                    format!("{r} {unit}: CPU per {per}, both proxies"),
                    cpu(ours.cpu_us[2]),
                    cpu(envoy.cpu_us[2]),
                    times(ratio(ours.cpu_us[2], envoy.cpu_us[2])),
                    "≤ ×0.30".into(),
                ]);
                let added = |v| sc.delta(v, Variant::Baseline).p99_us;
                let target = if r == 5000 { "≤ +1.3 ms" } else { "" };
                rows.push([
                    format!("{r} {unit}: added p99 vs direct"),
                    plus(added(OURS)),
                    plus(added(ENVOY)),
                    String::new(),
                    target.into(),
                ]);
            }
            Mode::Max => {
                let paired = sc.delta(OURS, ENVOY).rate_ratio;
                rows.push([
                    "max rate".into(),
                    rate(ours.rate, section.unit),
                    rate(envoy.rate, section.unit),
                    times(paired.or_else(|| ratio(ours.rate, envoy.rate))),
                    "≥ ×4".into(),
                ]);
            }
        }
    }
    let mib = |v: Option<f64>| v.map_or("-".into(), |m| format!("{m:.1} MiB"));
    let (idle_ours, idle_envoy) = (largest_mib(&section.idle_memory, OURS), largest_mib(&section.idle_memory, ENVOY));
    rows.push([
        "RSS per proxy idle, before load (largest)".into(),
        mib(idle_ours),
        mib(idle_envoy),
        times(ratio(idle_ours, idle_envoy)),
        format!("≤ {IDLE_RSS_TARGET_MIB:.0} MiB: {}", verdict(idle_ours, IDLE_RSS_TARGET_MIB)),
    ]);
    rows.push([
        "RSS per proxy after all runs (largest)".into(),
        mib(rss_mib(section, OURS)),
        mib(rss_mib(section, ENVOY)),
        times(ratio(rss_mib(section, OURS), rss_mib(section, ENVOY))),
        "≤ 20 MB at 5,000 req/s".into(),
    ]);
    rows
}

/// The markdown tables of every section that has both our mTLS mesh and
/// Envoy's pair; empty if none has.
pub fn markdown(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections {
        let rows = rows(s);
        if rows.is_empty() {
            continue;
        }
        let proto = s.title.split(':').next().unwrap_or(&s.key);
        out += &format!(
            "\n### Targets, {proto}: our mTLS pair against Envoy's (same rounds)\n\n\
             | {proto} | ours (mTLS pair) | Envoy (mTLS pair) | ours ÷ Envoy | target |\n|---|---|---|---|---|\n"
        );
        for r in rows {
            out += &format!("| {} |\n", r.join(" | "));
        }
    }
    out
}

const FLOOR_TCP: Variant = Variant::Peer(Peer::FloorTcp);
const FLOOR_TLS: Variant = Variant::Peer(Peer::FloorTls);

/// The floor table's rows, one per fixed rate: CPU per request (both
/// processes) of the TCP relay pair, the TLS relay pair, ours and Envoy's;
/// each ÷ Envoy; ours − floor (TLS). None without Envoy's pair and a floor.
pub fn floor_rows(section: &Section) -> Vec<[String; 9]> {
    let has = |v| section.variants.contains(&v);
    if !(has(ENVOY) && (has(FLOOR_TCP) || has(FLOOR_TLS))) {
        return Vec::new();
    }
    let unit = section.unit.rate();
    let mut rows = Vec::new();
    for sc in &section.scenarios {
        let Mode::Fixed(r) = sc.mode else { continue };
        let [tcp, tls, ours, envoy] = [FLOOR_TCP, FLOOR_TLS, OURS, ENVOY].map(|v| sc.stats(v).cpu_us[2]);
        let above = match (ours, tls) {
            (Some(o), Some(f)) => format!("{:+.0} µs", o - f),
            _ => "-".into(),
        };
        rows.push([
            format!("{r} {unit}"),
            cpu(tcp),
            cpu(tls),
            cpu(ours),
            cpu(envoy),
            times(ratio(tcp, envoy)),
            times(ratio(tls, envoy)),
            times(ratio(ours, envoy)),
            above,
        ]);
    }
    rows
}

/// The floor tables: what any relay pair pays here, against ours and Envoy's.
pub fn floor_markdown(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections {
        let rows = floor_rows(s);
        if rows.is_empty() {
            continue;
        }
        let (proto, per) = (s.title.split(':').next().unwrap_or(&s.key), s.unit.noun());
        out += &format!(
            "\n### Floor, {proto}: CPU per {per} of both processes, same rounds (target: ours ≤ ×0.30 Envoy)\n\n\
             | {proto} | floor (TCP relays) | floor (TLS relays) | ours (mTLS) | Envoy (mTLS) | TCP ÷ Envoy | \
             TLS ÷ Envoy | ours ÷ Envoy | ours − floor (TLS) |\n|---|---|---|---|---|---|---|---|---|\n"
        );
        for r in rows {
            out += &format!("| {} |\n", r.join(" | "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::parse::Sample;
    use crate::bench::report::{Run, Scenario, Unit};

    fn run(round: u32, variant: Variant, ok: u64, rps: f64, p99: f64, cpu: [u64; 3]) -> Run {
        let sample = Sample { ok, errors: 0, rps, p50_us: Some(p99 / 2.0), p90_us: None, p99_us: Some(p99) };
        Run { round, variant, sample, cpu_ticks: cpu, peer_connections: None, spans: None, spans_dropped: None }
    }

    fn section() -> Section {
        let b = Variant::Baseline;
        // 3000 requests a run; ticks are 10 ms: ours 9+9 ticks = 180 ms / 3000 = 60 µs; Envoy 18+18 → 120 µs.
        let fixed = Scenario {
            mode: Mode::Fixed(5000),
            tool: "oha",
            connections: 16,
            runs: vec![
                run(1, b, 3000, 5000.0, 2000.0, [0, 0, 3]),
                run(1, OURS, 3000, 5000.0, 3000.0, [9, 9, 3]),
                run(1, ENVOY, 3000, 5000.0, 9000.0, [18, 18, 3]),
            ],
        };
        let max = Scenario {
            mode: Mode::Max,
            tool: "wrk",
            connections: 16,
            runs: vec![
                run(1, b, 1, 70_000.0, 1.0, [0, 0, 1]),
                run(1, OURS, 1, 12_000.0, 1.0, [1, 1, 1]),
                run(1, ENVOY, 1, 4_000.0, 1.0, [1, 1, 1]),
            ],
        };
        let mem = |kib| Some(Memory { rss_kib: kib, hwm_kib: kib });
        Section {
            key: "http1".into(),
            title: "HTTP/1.1: baseline vs mTLS mesh vs Envoy mTLS pair".into(),
            unit: Unit::Request,
            variants: vec![b, OURS, ENVOY],
            comparisons: vec![],
            scenarios: vec![fixed, max],
            memory: vec![(OURS, [mem(16 * 1024), mem(12 * 1024)]), (ENVOY, [mem(64 * 1024), mem(68 * 1024)])],
            idle_memory: vec![(OURS, [mem(10 * 1024 + 512), mem(9 * 1024)]), (ENVOY, [mem(40 * 1024), mem(41 * 1024)])],
            notes: vec![],
        }
    }

    /// Catches an inverted ratio (Envoy ÷ ours), the wrong reference for
    /// added p99 (Envoy instead of direct), or a sum instead of the largest RSS.
    #[test]
    fn ratios_to_envoy_and_added_p99() {
        let rows = rows(&section());
        let find = |what: &str| rows.iter().find(|r| r[0].contains(what)).cloned().expect(what);
        assert_eq!(find("CPU per request")[1..4], ["60 µs", "120 µs", "×0.50"]);
        assert_eq!(find("added p99")[1..3], ["+1.00 ms", "+7.00 ms"]);
        assert_eq!(find("added p99")[4], "≤ +1.3 ms");
        assert_eq!(find("max rate")[1..4], ["12.0k req/s", "4.0k req/s", "×3.00"]);
        assert_eq!(find("after all runs")[1..4], ["16.0 MiB", "68.0 MiB", "×0.24"]);
        assert_eq!(find("idle")[1..5], ["10.5 MiB", "41.0 MiB", "×0.26", "≤ 10 MiB: NOT met"]);
        let md = markdown(&[section()]);
        assert!(md.contains("### Targets, HTTP/1.1") && md.contains("| max rate | 12.0k req/s |"), "{md}");
    }

    /// Catches a streaming table labelled in requests: its rates are
    /// messages per second and its CPU is per message.
    #[test]
    fn a_streaming_table_is_labelled_in_messages() {
        let streaming = Section { unit: Unit::Message, ..section() };
        let rows = rows(&streaming);
        assert!(rows.iter().any(|r| r[0] == "5000 msg/s: CPU per message, both proxies"), "{rows:?}");
        assert!(rows.iter().any(|r| r[0] == "max rate" && r[1] == "12.0k msg/s"), "{rows:?}");
        assert!(rows.iter().all(|r| !r[0].contains("req/s") && !r[1].contains("req/s")), "{rows:?}");
    }

    /// Catches a verdict on the wrong side of the bound (the bound itself meets it).
    #[test]
    fn idle_rss_verdict() {
        assert_eq!(verdict(Some(10.0), IDLE_RSS_TARGET_MIB), "met");
        assert_eq!(verdict(Some(10.01), IDLE_RSS_TARGET_MIB), "NOT met");
        assert_eq!(verdict(None, IDLE_RSS_TARGET_MIB), "not measured");
        let mut s = section();
        s.idle_memory[0].1 = [Some(Memory { rss_kib: 9 * 1024, hwm_kib: 9 * 1024 }), None];
        let row = rows(&s).into_iter().find(|r| r[0].contains("idle")).expect("idle row");
        assert_eq!(row[4], "≤ 10 MiB: met");
    }

    /// Catches floor ratios inverted or taken against ours instead of
    /// Envoy's, the wrong floor subtracted from ours, a row for max rate
    /// (its CPU is not at a fixed load), or a table without a floor.
    #[test]
    fn floor_against_envoy_and_ours_above_it() {
        let mut s = section();
        assert!(floor_rows(&s).is_empty() && floor_markdown(std::slice::from_ref(&s)).is_empty());
        // 3000 requests: TCP 3+3 ticks → 20 µs, TLS 4+5 → 30 µs.
        s.variants.extend([FLOOR_TCP, FLOOR_TLS]);
        s.scenarios[0].runs.push(run(1, FLOOR_TCP, 3000, 5000.0, 2500.0, [3, 3, 3]));
        s.scenarios[0].runs.push(run(1, FLOOR_TLS, 3000, 5000.0, 2600.0, [4, 5, 3]));
        let rows = floor_rows(&s);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            rows[0],
            ["5000 req/s", "20 µs", "30 µs", "60 µs", "120 µs", "×0.17", "×0.25", "×0.50", "+30 µs"].map(String::from)
        );
        assert!(floor_markdown(&[s]).contains("### Floor, HTTP/1.1"));
    }

    /// Catches a targets table for a section without Envoy's pair (nothing to compare).
    #[test]
    fn no_table_without_envoy() {
        let mut s = section();
        s.variants.retain(|v| *v != ENVOY);
        assert!(rows(&s).is_empty() && markdown(&[s]).is_empty());
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
    }
}
