//! Sums of metrics as the proxies write them.

use super::*;

const METRICS: &str = r#"# HELP tcp_open Connections accepted.
# TYPE tcp_open counter
tcp_open_total{direction="outbound",target="bench.default:80",tls="true",peer_id="spiffe://bench.mesh/ns/default/sa/bench"} 3
tcp_open_total{direction="inbound",target="127.0.0.1:8080",tls="true",peer_id="spiffe://bench.mesh/ns/default/sa/client"} 120
tcp_open_total{direction="inbound",target="127.0.0.1:8080",tls="false",peer_id=""} 7
tcp_open_connections{direction="inbound",target="127.0.0.1:8080",tls="true",peer_id=""} 2
odd_total{note="a \"quoted\", {braced} value",tls="true"} 5
trace_spans_dropped_total 42
# EOF
"#;

#[test]
fn prometheus_sums() {
    assert_eq!(metric_sum(METRICS, "tcp_open_total", &[("direction", "inbound"), ("tls", "true")]), 120.0);
    assert_eq!(metric_sum(METRICS, "tcp_open_total", &[("direction", "inbound")]), 127.0);
    assert_eq!(metric_sum(METRICS, "tcp_open_total", &[]), 130.0);
    assert_eq!(metric_sum(METRICS, "tcp_open_total", &[("tls", "maybe")]), 0.0);
    assert_eq!(metric_sum(METRICS, "odd_total", &[("tls", "true")]), 5.0);
    assert_eq!(metric_sum(METRICS, "odd_total", &[("note", "a \"quoted\", {braced} value")]), 5.0);
    assert_eq!(metric_sum(METRICS, "trace_spans_dropped_total", &[]), 42.0);
    // A prefix of another metric's name is not that metric.
    assert_eq!(metric_sum(METRICS, "tcp_open", &[]), 0.0);
    assert_eq!(metric_sum("garbage{unterminated=\"x 1\n", "garbage", &[]), 0.0);
    assert_eq!(metric_sum("", "tcp_open_total", &[]), 0.0);
}
