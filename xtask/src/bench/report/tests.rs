use super::*;

fn run(round: u32, variant: Variant, ok: u64, rps: f64, p50: f64, p99: f64, cpu: [u64; 3]) -> Run {
    let sample = Sample { ok, errors: 0, rps, p50_us: Some(p50), p99_us: Some(p99) };
    Run { round, variant, sample, cpu_ticks: cpu }
}

fn scenario() -> Scenario {
    use Variant::{Baseline as B, Mesh as M};
    Scenario {
        mode: Mode::Fixed(1000),
        tool: "oha",
        runs: vec![
            run(1, B, 5000, 1000.0, 100.0, 400.0, [0, 0, 5]),
            run(1, M, 5000, 1000.0, 300.0, 900.0, [10, 8, 5]),
            run(2, B, 5000, 1000.0, 120.0, 500.0, [0, 0, 5]),
            run(2, M, 5000, 1000.0, 280.0, 1500.0, [12, 9, 5]),
            run(3, B, 5000, 1000.0, 90.0, 450.0, [0, 0, 5]),
            run(3, M, 5000, 1000.0, 350.0, 1000.0, [11, 10, 5]),
        ],
    }
}

#[test]
fn medians() {
    assert_eq!(median(vec![]), None);
    assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
}

#[test]
fn summary_pairs_rounds() {
    let s = scenario().summary();
    assert_eq!(s.p50, [Some(100.0), Some(300.0), Some(200.0)]);
    // Per-round differences 500, 1000, 550: the median is 550, not 1000 - 450.
    assert_eq!(s.p99, [Some(450.0), Some(1000.0), Some(550.0)]);
    assert_eq!(s.rps, [Some(1000.0), Some(1000.0), Some(1.0)]);
    // 33 ticks = 330 ms over 15000 requests = 22 µs each.
    let client = s.cpu_us_per_request[0].expect("cpu");
    assert!((client - 22.0).abs() < 1e-9, "{client}");
    assert_eq!(s.errors, [0, 0]);
    // 15 ticks = 150 ms over 15000 requests.
    assert_eq!(s.nginx_cpu_us_per_request, [Some(10.0), Some(10.0)]);
}

#[test]
fn summary_of_failed_runs_has_no_figures() {
    let mut sc = scenario();
    for r in &mut sc.runs {
        r.sample = Sample { errors: 7, ..Sample::default() };
    }
    let s = sc.summary();
    assert_eq!(s.rps, [None, None, None]);
    assert_eq!(s.cpu_us_per_request, [None, None]);
    assert_eq!(s.errors, [21, 21]);
}

fn report() -> Report {
    let memory = [Memory { rss_kib: 8192, hwm_kib: 10240 }, Memory { rss_kib: 4096, hwm_kib: 5120 }];
    let mut max = scenario();
    max.mode = Mode::Max;
    max.tool = "wrk";
    Report {
        duration_secs: 5,
        rounds: 3,
        connections: 16,
        proxy_threads: 1,
        results: vec![ProtoResult { proto: Proto::Http1, scenarios: vec![scenario(), max], memory }],
    }
}

#[test]
fn table_shows_every_figure() {
    let t = report().table();
    for want in [
        "HTTP/1.1",
        "1000 req/s, 16 conns, oha",
        "max rate, 16 conns, wrk",
        "+200 µs",
        "1.00 ms",
        "x1.000",
        "22.0 µs",
        "CPU/request, nginx",
        "10.0 µs",
        "RSS, client proxy",
        "8.0 MiB  peak 10.0 MiB",
    ] {
        assert!(t.contains(want), "{want:?} missing from:\n{t}");
    }
    assert!(!t.contains("failed requests"));
}

#[test]
fn json_has_summaries_and_runs() {
    let j = report().json();
    assert_eq!(j.pointer("/settings/rounds"), Some(&json!(3)));
    let sc = j.pointer("/results/0/scenarios/0").expect("scenario");
    assert_eq!(sc.pointer("/mode"), Some(&json!("fixed_rate")));
    assert_eq!(sc.pointer("/summary/p50_us/added"), Some(&json!(200.0)));
    assert_eq!(sc.pointer("/runs").and_then(Value::as_array).map(Vec::len), Some(6));
    assert_eq!(j.pointer("/results/0/memory/server_proxy/hwm_kib"), Some(&json!(5120)));
}
