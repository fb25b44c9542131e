//! The parsers against outputs captured from wrk 4.1.0, h2load 1.52.0 and oha 1.16.0.

use super::*;

macro_rules! sample {
    ($file:literal) => {
        include_str!(concat!("../testdata/", $file))
    };
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-6 * b.abs().max(1.0))
}

#[test]
fn time_units() {
    assert_eq!(micros("66.00us"), Some(66.0));
    assert_eq!(micros("2.62ms"), Some(2620.0));
    assert_eq!(micros("1.5s"), Some(1.5e6));
    assert_eq!(micros("34us"), Some(34.0));
    assert_eq!(micros("12"), None);
    assert_eq!(micros("3parsecs"), None);
}

#[test]
fn wrk_success() {
    let s = wrk(sample!("wrk_ok.txt")).expect("parses");
    assert_eq!(s.ok, 121_570);
    assert_eq!(s.errors, 0);
    assert!(close(Some(s.rps), 120_789.82));
    assert!(close(s.p50_us, 66.0));
    assert!(close(s.p90_us, 2620.0));
    assert!(close(s.p99_us, 6810.0));
}

#[test]
fn wrk_non_2xx_are_errors() {
    let s = wrk(sample!("wrk_non2xx.txt")).expect("parses");
    assert_eq!(s.ok, 0);
    assert_eq!(s.errors, 102_101);
    assert_eq!(s.p50_us, None, "no latency without a successful response");
}

#[test]
fn wrk_socket_errors() {
    let s = wrk(sample!("wrk_sockerr.txt")).expect("parses");
    assert_eq!(s.ok, 0);
    assert_eq!(s.errors, 12_033);
    assert_eq!(s.rps, 0.0);
}

#[test]
fn wrk_failure_to_start_is_an_error() {
    let err = wrk(sample!("wrk_errors.txt")).expect_err("no report");
    assert!(err.to_string().contains("Connection refused"), "{err}");
    assert!(wrk("").is_err());
}

#[test]
fn h2load_success() {
    let s = h2load(sample!("h2load_ok.txt")).expect("parses");
    assert_eq!(s, Sample { ok: 86_159, errors: 0, rps: 86_159.0, ..Sample::default() });
}

#[test]
fn h2load_failures() {
    let s = h2load(sample!("h2load_non2xx.txt")).expect("parses");
    assert_eq!((s.ok, s.errors), (0, 48_464));
    let s = h2load(sample!("h2load_errors.txt")).expect("parses");
    assert_eq!((s.ok, s.errors, s.rps), (0, 0, 0.0));
    assert!(h2load("starting benchmark...\n").is_err());
}

#[test]
fn h2load_log_percentiles() {
    let ([p50, p90, p99], ok) = h2load_log(sample!("h2load_log.tsv")).expect("parses");
    assert_eq!(ok, 20, "503s are not counted");
    assert_eq!(p50, Some(16.0));
    assert_eq!(p90, Some(31.0));
    assert_eq!(p99, Some(115.0));
    assert_eq!(h2load_log("").expect("empty is fine"), ([None, None, None], 0));
    assert!(h2load_log("1\t200\n").is_err());
}

#[test]
fn percentiles_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&v, 0.5), Some(50.0));
    assert_eq!(percentile(&v, 0.99), Some(99.0));
    assert_eq!(percentile(&v, 0.0), Some(1.0));
    assert_eq!(percentile(&[], 0.5), None);
}

#[test]
fn oha_http1() {
    let s = oha(sample!("oha_h1.json")).expect("parses");
    assert_eq!((s.ok, s.errors), (2000, 0), "deadline aborts are not errors");
    assert!(close(Some(s.rps), 1_000.456_226_529_247_6));
    assert!(close(s.p50_us, 79.069));
    assert!(close(s.p90_us, 186.482));
    assert!(close(s.p99_us, 2585.885));
}

#[test]
fn oha_http2() {
    let s = oha(sample!("oha_h2.json")).expect("parses");
    assert_eq!((s.ok, s.errors), (500, 0));
    assert!(close(s.p99_us, 214.312));
}

#[test]
fn oha_failures() {
    let s = oha(sample!("oha_non2xx.json")).expect("parses");
    assert_eq!((s.ok, s.errors, s.p50_us), (0, 200, None));
    let s = oha(sample!("oha_refused.json")).expect("parses");
    assert_eq!((s.ok, s.errors, s.p99_us), (0, 100, None));
    assert!(oha("Error: connection refused").is_err());
}

#[test]
fn http_status_lines() {
    assert_eq!(http_status(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\nok"), Some(200));
    assert_eq!(http_status(b"HTTP/1.0 503 Service Unavailable\r\n\r\n"), Some(503));
    assert_eq!(http_status(b"HTTP/1.1 200 OK"), None, "no complete status line");
    assert_eq!(http_status(b"SSH-2.0-OpenSSH\r\n"), None);
    assert_eq!(http_status(b"HTTP/1.1 abc\r\n"), None);
    assert_eq!(http_status(b""), None);
}
