use super::*;

const B: Variant = Variant::Baseline;
const P: Variant = Variant::PLAINTEXT;
const M: Variant = Variant::MTLS;

fn run(round: u32, variant: Variant, ok: u64, rps: f64, p50: f64, p99: f64, cpu: [u64; 3]) -> Run {
    let sample = Sample { ok, errors: 0, rps, p50_us: Some(p50), p90_us: None, p99_us: Some(p99) };
    Run { round, variant, sample, cpu_ticks: cpu, peer_connections: None, spans: None, spans_dropped: None }
}

/// Three rounds of baseline, plaintext and mTLS at a fixed rate, in rotated order.
fn scenario() -> Scenario {
    Scenario {
        mode: Mode::Fixed(1000),
        tool: "oha",
        connections: 16,
        runs: vec![
            run(1, B, 5000, 1000.0, 100.0, 400.0, [0, 0, 5]),
            run(1, P, 5000, 1000.0, 300.0, 900.0, [10, 8, 5]),
            run(1, M, 5000, 1000.0, 330.0, 1000.0, [12, 10, 5]),
            run(2, P, 5000, 1000.0, 280.0, 1500.0, [12, 9, 5]),
            run(2, M, 5000, 1000.0, 300.0, 1600.0, [14, 11, 5]),
            run(2, B, 5000, 1000.0, 120.0, 500.0, [0, 0, 5]),
            run(3, M, 5000, 1000.0, 380.0, 1040.0, [13, 12, 5]),
            run(3, B, 5000, 1000.0, 90.0, 450.0, [0, 0, 5]),
            run(3, P, 5000, 1000.0, 350.0, 1000.0, [11, 10, 5]),
        ],
    }
}

fn max_scenario() -> Scenario {
    Scenario {
        mode: Mode::Max,
        tool: "wrk",
        connections: 16,
        runs: vec![
            run(1, B, 100_000, 50_000.0, 100.0, 400.0, [0, 0, 500]),
            run(1, P, 40_000, 20_000.0, 300.0, 900.0, [200, 200, 200]),
            run(1, M, 36_000, 18_000.0, 330.0, 1000.0, [200, 200, 180]),
        ],
    }
}

fn section() -> Section {
    let memory = [Some(Memory { rss_kib: 8192, hwm_kib: 10240 }), Some(Memory { rss_kib: 4096, hwm_kib: 5120 })];
    Section {
        key: "http1".into(),
        title: "HTTP/1.1: baseline vs plaintext mesh vs mTLS mesh".into(),
        unit: Unit::Request,
        variants: vec![B, P, M],
        comparisons: vec![(P, B), (M, B), (M, P)],
        scenarios: vec![scenario(), max_scenario()],
        memory: vec![(P, memory), (M, memory)],
        idle_memory: vec![],
        notes: vec!["a caveat".into()],
    }
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9 * b.abs().max(1.0))
}

#[test]
fn medians() {
    assert_eq!(median(vec![]), None);
    assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
}

#[test]
fn stats_per_path() {
    let sc = scenario();
    let p = sc.stats(P);
    assert_eq!((p.p50_us, p.p99_us, p.rate), (Some(300.0), Some(1000.0), Some(1000.0)));
    // Client proxy: 33 ticks = 330 ms over 15000 requests = 22 µs each; server: 27 ticks = 18 µs.
    assert!(close(p.cpu_us[0], 22.0) && close(p.cpu_us[1], 18.0) && close(p.cpu_us[2], 40.0), "{p:?}");
    assert!(close(p.cpu_us[3], 10.0), "nginx: 15 ticks over 15000 requests");
    assert_eq!((p.ok, p.errors), (15_000, 0));
    assert_eq!((p.peer_connections, p.spans, p.spans_dropped), (None, None, None));
    let b = sc.stats(B);
    assert_eq!(&b.cpu_us[..3], &[None, None, None], "the baseline has no proxy");
    assert!(close(b.cpu_us[3], 10.0));
}

#[test]
fn deltas_pair_rounds_whatever_the_order() {
    let sc = scenario();
    let d = sc.delta(M, P);
    // Per-round p50 differences 30, 20, 30: the median is 30.
    assert_eq!(d.p50_us, Some(30.0));
    // Per-round p99 differences 100, 100, 40.
    assert_eq!(d.p99_us, Some(100.0));
    assert_eq!(d.rate_ratio, Some(1.0));
    // mTLS: client 39 ticks = 26 µs, server 33 ticks = 22 µs; plaintext 22 + 18.
    assert!(close(d.cpu_us[0], 4.0) && close(d.cpu_us[1], 4.0) && close(d.cpu_us[2], 8.0), "{d:?}");
    assert!(close(d.cpu_ratio, 48.0 / 40.0), "{d:?}");

    let d = sc.delta(P, B);
    // Per-round differences 200, 160, 260 (paired by round, not by position).
    assert_eq!(d.p50_us, Some(200.0));
    assert!(close(d.cpu_us[2], 40.0), "against the baseline, the added CPU is the proxies' own");
    assert_eq!(d.cpu_ratio, None);
}

#[test]
fn throughput_ratio() {
    let d = max_scenario().delta(M, P);
    assert!(close(d.rate_ratio, 0.9), "{d:?}");
    assert!(close(max_scenario().delta(M, B).rate_ratio, 0.36));
}

#[test]
fn failed_runs_have_no_figures() {
    let mut sc = scenario();
    for r in &mut sc.runs {
        r.sample = Sample { errors: 7, ..Sample::default() };
    }
    let s = sc.stats(M);
    assert_eq!((s.rate, s.p50_us), (None, None));
    assert_eq!(s.cpu_us, [None; 4]);
    assert_eq!(s.errors, 21);
    assert_eq!(sc.delta(M, P), Delta::default());
}

#[test]
fn table_shows_every_figure() {
    let t = section().table();
    for want in [
        "== HTTP/1.1: baseline vs plaintext mesh vs mTLS mesh ==",
        "plaintext vs baseline",
        "mTLS vs baseline",
        "mTLS vs plaintext",
        "1000 req/s, oha",
        "max rate, 16 conns, wrk",
        "+200 µs",
        "+30 µs",
        "1.00 ms",
        "50.0k/s",
        "x0.900",
        "x0.360",
        "22.0 µs",
        "+8.0 µs (x1.200)",
        "CPU/request, both proxies",
        "CPU/request, nginx",
        "RSS (peak), client proxy",
        "8.0 MiB (10.0 MiB)",
        "note: a caveat",
    ] {
        assert!(t.contains(want), "{want:?} missing from:\n{t}");
    }
    for absent in ["failed requests", "spans", "proxy conns"] {
        assert!(!t.contains(absent), "{absent:?} in:\n{t}");
    }
    // The scenario is named once, on its first row.
    assert_eq!(t.matches("1000 req/s, oha").count(), 1, "{t}");
}

#[test]
fn columns_line_up() {
    let row = |cells: &[&str]| Some(cells.iter().map(|c| c.to_string()).collect::<Vec<_>>());
    let rows = [row(&["scenario", "metric", "baseline", "mesh"]), None, row(&["x", "p50", "9 µs", "+120 µs"])];
    let want = "scenario  metric  baseline     mesh\n\nx         p50         9 µs  +120 µs\n";
    assert_eq!(layout(&rows, 2), want);
}

fn traced_section() -> Section {
    let traced = M.traced();
    let mut sc = scenario();
    for r in &mut sc.runs {
        if r.variant == P {
            r.variant = traced;
            r.spans = Some(9_990);
            r.spans_dropped = Some(0);
        }
    }
    Section {
        key: "tracing_http1".into(),
        title: "Tracing".into(),
        unit: Unit::Request,
        variants: vec![B, M, traced],
        comparisons: vec![(M, B), (traced, B), (traced, M)],
        scenarios: vec![sc],
        memory: vec![],
        idle_memory: vec![],
        notes: vec![],
    }
}

#[test]
fn tracing_rows() {
    let s = traced_section();
    let stats = s.scenarios[0].stats(M.traced());
    assert_eq!(stats.spans, Some(29_970));
    assert!(close(stats.spans_per_unit(), 1.998));
    let t = s.table();
    for want in ["mTLS + tracing", "mTLS+tracing vs mTLS", "spans received", "29970 (2.00/request)", "spans dropped"] {
        assert!(t.contains(want), "{want:?} missing from:\n{t}");
    }
    let j = Report {
        duration_secs: 5,
        rounds: 3,
        proxy_threads: 1,
        cpus: 2,
        load_avg: ["0.5 0.4 0.3".into(), "1.0 0.5 0.3".into()],
        sections: vec![s],
    }
    .json();
    let v = j.pointer("/sections/0/scenarios/0/variants/mtls_tracing").expect("traced stats");
    assert_eq!(v.pointer("/spans"), Some(&json!(29_970)));
    assert_eq!(v.pointer("/spans_dropped"), Some(&json!(0)));
    assert_eq!(j.pointer("/sections/0/scenarios/0/comparisons/2/subject"), Some(&json!("mtls_tracing")));
    assert_eq!(j.pointer("/sections/0/scenarios/0/comparisons/2/reference"), Some(&json!("mtls")));
}

#[test]
fn connection_rows() {
    let mut sc = scenario();
    sc.mode = Mode::Fixed(200);
    sc.tool = "xtask tcp client";
    for r in &mut sc.runs {
        if r.variant != B {
            r.peer_connections = Some(r.sample.ok);
        }
    }
    let mut max = max_scenario();
    max.tool = "xtask tcp client";
    let s = Section {
        key: "handshake".into(),
        title: "New connections".into(),
        unit: Unit::Connection,
        variants: vec![B, P, M],
        comparisons: vec![(P, B), (M, B), (M, P)],
        scenarios: vec![sc, max],
        memory: vec![],
        idle_memory: vec![],
        notes: vec![],
    };
    assert_eq!(s.scenarios[0].stats(M).peer_connections_per_unit(), Some(1.0));
    let t = s.table();
    for want in [
        "200 conn/s, xtask tcp client",
        "max rate, 16 workers, xtask tcp client",
        "new connections",
        "p50 connection time",
        "CPU/connection, both proxies",
        "proxy conns/connection",
        "1.00",
    ] {
        assert!(t.contains(want), "{want:?} missing from:\n{t}");
    }
    assert!(!t.contains("RSS"), "no memory rows without memory:\n{t}");
}

#[test]
fn failures_are_shown() {
    let mut s = section();
    s.scenarios[0].runs[2].sample.errors = 3;
    let t = s.table();
    assert!(t.contains("failed requests"), "{t}");
}

#[test]
fn report_header_and_json() {
    let r = Report {
        duration_secs: 5,
        rounds: 3,
        proxy_threads: 1,
        cpus: 2,
        load_avg: ["0.50 0.40 0.30".into(), "1.00 0.50 0.30".into()],
        sections: vec![section()],
    };
    let t = r.table();
    assert!(t.contains("5 s per run, 3 round(s)"), "{t}");
    assert!(t.contains("2 CPU(s), load average 0.50 0.40 0.30 at the start"), "{t}");
    let j = r.json();
    assert_eq!(j.pointer("/settings/rounds"), Some(&json!(3)));
    assert_eq!(j.pointer("/settings/load_avg/end"), Some(&json!("1.00 0.50 0.30")));
    let sec = j.pointer("/sections/0").expect("section");
    assert_eq!(sec.pointer("/key"), Some(&json!("http1")));
    assert_eq!(sec.pointer("/unit"), Some(&json!("request")));
    assert_eq!(sec.pointer("/variants"), Some(&json!(["baseline", "plaintext", "mtls"])));
    let sc = sec.pointer("/scenarios/0").expect("scenario");
    assert_eq!(sc.pointer("/mode"), Some(&json!("fixed_rate")));
    assert_eq!(sc.pointer("/rate"), Some(&json!(1000)));
    assert_eq!(sc.pointer("/variants/plaintext/p50_us"), Some(&json!(300.0)));
    assert_eq!(sc.pointer("/variants/baseline/cpu_us_per_unit/client_proxy"), Some(&Value::Null));
    assert_eq!(sc.pointer("/comparisons/2/subject"), Some(&json!("mtls")));
    assert_eq!(sc.pointer("/comparisons/2/p50_us_added"), Some(&json!(30.0)));
    assert_eq!(sc.pointer("/runs").and_then(Value::as_array).map(Vec::len), Some(9));
    assert_eq!(sc.pointer("/runs/1/variant"), Some(&json!("plaintext")));
    let max = sec.pointer("/scenarios/1/comparisons/2/rate_ratio").and_then(Value::as_f64);
    assert!(close(max, 0.9), "{max:?}");
    assert_eq!(sec.pointer("/memory/mtls/server_proxy/hwm_kib"), Some(&json!(5120)));
    assert_eq!(sec.pointer("/notes/0"), Some(&json!("a caveat")));
}
