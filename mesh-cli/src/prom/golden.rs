//! Golden metrics (request rate, success rate, latency quantiles, mTLS share)
//! from the proxies' `/metrics`.
//!
//! A [`Counters`] holds one direction's cumulative counters from one scrape
//! of one proxy. Two scrapes give the traffic in between
//! ([`Counters::since`]); those deltas add up across replicas
//! ([`Counters::add`]) and turn into [`Stats`] over the elapsed time.

use super::{Scrape, parse_value};
use serde::Serialize;
use std::time::Duration;

/// The responses counter: labels `direction`, `tls`, `classification`.
pub const RESPONSE_TOTAL: &str = "response_total";
/// The latency histogram's buckets: labels `direction`, `tls`, `le`.
pub const LATENCY_BUCKET: &str = "response_latency_seconds_bucket";

/// One cumulative histogram bucket: how many observations were `<= le`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    /// Upper bound, in the metric's unit; the last bucket is `+Inf`.
    pub le: f64,
    /// Cumulative count.
    pub count: f64,
}

/// A cumulative histogram, buckets sorted by bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// The buckets, ascending by `le`.
    pub buckets: Vec<Bucket>,
}

impl Histogram {
    /// Adds `count` to the bucket bounded by `le`, creating it if needed.
    pub fn add(&mut self, le: f64, count: f64) {
        match self.buckets.iter().position(|b| b.le >= le) {
            Some(i) if self.buckets[i].le == le => self.buckets[i].count += count,
            Some(i) => self.buckets.insert(i, Bucket { le, count }),
            None => self.buckets.push(Bucket { le, count }),
        }
    }

    /// Observations in all buckets (the `+Inf` bucket's count).
    pub fn total(&self) -> f64 {
        self.buckets.last().filter(|b| b.le == f64::INFINITY).map_or(0.0, |b| b.count)
    }

    /// The `q`-quantile (0 ≤ q ≤ 1), interpolating linearly inside the bucket
    /// that holds it, as Prometheus' `histogram_quantile` does: the first
    /// bucket's lower bound is 0, and a quantile in the `+Inf` bucket is the
    /// largest finite bound. `None` without observations or a `+Inf` bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total <= 0.0 || q.is_nan() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        // Counts may dip by a hair when scrapes race with updates: force them
        // to be monotonic, as Prometheus does.
        let mut below = 0.0_f64;
        let mut lower = 0.0_f64;
        for (i, b) in self.buckets.iter().enumerate() {
            let count = b.count.max(below);
            if count >= rank {
                if b.le == f64::INFINITY {
                    return Some(if i == 0 { 0.0 } else { lower });
                }
                if i == 0 && b.le <= 0.0 {
                    return Some(b.le);
                }
                let in_bucket = count - below;
                if in_bucket <= 0.0 {
                    return Some(b.le);
                }
                return Some(lower + (b.le - lower) * (rank - below) / in_bucket);
            }
            below = count;
            lower = b.le;
        }
        None
    }

    fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|b| {
                let before = earlier.buckets.iter().find(|e| e.le == b.le).map_or(0.0, |e| e.count);
                Bucket { le: b.le, count: (b.count - before).max(0.0) }
            })
            .collect();
        Histogram { buckets }
    }

    fn merge(&mut self, other: &Histogram) {
        for b in &other.buckets {
            self.add(b.le, b.count);
        }
    }
}

/// Cumulative response counters of one traffic direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Responses classified `success`.
    pub success: f64,
    /// Responses classified `failure`.
    pub failure: f64,
    /// Responses sent on mutually authenticated TLS connections.
    pub tls: f64,
    /// Latency to response headers, in seconds.
    pub latency: Histogram,
}

impl Counters {
    /// Sums the samples of `direction` (`inbound` or `outbound`) in a scrape,
    /// across targets, status codes and TLS.
    pub fn from_scrape(scrape: &Scrape, direction: &str) -> Self {
        let mut c = Counters::default();
        let ours = |s: &&super::Sample| s.label("direction") == Some(direction);
        for s in scrape.named(RESPONSE_TOTAL).filter(ours) {
            match s.label("classification") {
                Some("success") => c.success += s.value,
                Some("failure") => c.failure += s.value,
                _ => continue,
            }
            if s.label("tls") == Some("true") {
                c.tls += s.value;
            }
        }
        for s in scrape.named(LATENCY_BUCKET).filter(ours) {
            if let Some(le) = s.label("le").and_then(parse_value) {
                c.latency.add(le, s.value);
            }
        }
        c
    }

    /// Responses counted (success and failure).
    pub fn requests(&self) -> f64 {
        self.success + self.failure
    }

    /// The traffic between `earlier` and `self`, two scrapes of one proxy.
    /// Counters that went down mean the proxy restarted: then everything in
    /// `self` is new.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let reset = self.success < earlier.success
            || self.failure < earlier.failure
            || self.tls < earlier.tls
            || self.latency.total() < earlier.latency.total();
        if reset {
            return self.clone();
        }
        Counters {
            success: self.success - earlier.success,
            failure: self.failure - earlier.failure,
            tls: self.tls - earlier.tls,
            latency: self.latency.since(&earlier.latency),
        }
    }

    /// Adds another proxy's counters (or deltas) to these.
    pub fn add(&mut self, other: &Counters) {
        self.success += other.success;
        self.failure += other.failure;
        self.tls += other.tls;
        self.latency.merge(&other.latency);
    }

    /// Golden metrics of these deltas over `elapsed`.
    pub fn stats(&self, elapsed: Duration) -> Stats {
        let requests = self.requests();
        let secs = elapsed.as_secs_f64();
        let share = |part: f64| (requests > 0.0).then(|| part / requests);
        Stats {
            requests,
            rps: if secs > 0.0 { requests / secs } else { 0.0 },
            success_rate: share(self.success),
            p50_seconds: self.latency.quantile(0.5),
            p99_seconds: self.latency.quantile(0.99),
            tls_share: share(self.tls),
        }
    }
}

/// Golden metrics over one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Responses in the period.
    pub requests: f64,
    /// Responses per second.
    pub rps: f64,
    /// Share of responses classified success (0..=1); `None` without traffic.
    pub success_rate: Option<f64>,
    /// Median latency, in seconds.
    pub p50_seconds: Option<f64>,
    /// 99th percentile latency, in seconds.
    pub p99_seconds: Option<f64>,
    /// Share of responses on mTLS connections (0..=1); `None` without traffic.
    pub tls_share: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::parse;

    fn hist(buckets: &[(f64, f64)]) -> Histogram {
        let mut h = Histogram::default();
        for &(le, count) in buckets {
            h.add(le, count);
        }
        h
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        // 10 in (0, 1], 10 in (1, 2], none above.
        let h = hist(&[(1.0, 10.0), (2.0, 20.0), (4.0, 20.0), (f64::INFINITY, 20.0)]);
        assert!(close(h.quantile(0.5), 1.0), "{:?}", h.quantile(0.5));
        assert!(close(h.quantile(0.25), 0.5));
        assert!(close(h.quantile(0.75), 1.5));
        assert!(close(h.quantile(0.99), 1.98));
        assert!(close(h.quantile(0.0), 0.0));
    }

    #[test]
    fn quantile_in_the_inf_bucket_is_the_largest_finite_bound() {
        let h = hist(&[(0.1, 1.0), (0.5, 2.0), (f64::INFINITY, 10.0)]);
        assert!(close(h.quantile(0.99), 0.5));
    }

    #[test]
    fn quantile_needs_observations_and_inf() {
        assert_eq!(Histogram::default().quantile(0.5), None);
        assert_eq!(hist(&[(1.0, 0.0), (f64::INFINITY, 0.0)]).quantile(0.5), None);
        assert_eq!(hist(&[(1.0, 5.0)]).quantile(0.5), None, "no +Inf bucket");
    }

    #[test]
    fn buckets_stay_sorted_when_added_out_of_order() {
        let h = hist(&[(f64::INFINITY, 4.0), (0.5, 1.0), (0.1, 1.0), (0.5, 2.0)]);
        let les: Vec<f64> = h.buckets.iter().map(|b| b.le).collect();
        assert_eq!(les, vec![0.1, 0.5, f64::INFINITY]);
        assert_eq!(h.buckets[1].count, 3.0);
    }

    const EARLIER: &str = r#"
response_total{direction="inbound",target="a",tls="false",status_code="200",grpc_status="",classification="success"} 100
response_total{direction="inbound",target="a",tls="false",status_code="500",grpc_status="",classification="failure"} 2
response_total{direction="outbound",target="b",tls="false",status_code="200",grpc_status="",classification="success"} 999
response_latency_seconds_bucket{le="0.001",direction="inbound",target="a",tls="false"} 50
response_latency_seconds_bucket{le="0.01",direction="inbound",target="a",tls="false"} 100
response_latency_seconds_bucket{le="+Inf",direction="inbound",target="a",tls="false"} 102
response_latency_seconds_bucket{le="+Inf",direction="outbound",target="b",tls="false"} 999
"#;

    const LATER: &str = r#"
response_total{direction="inbound",target="a",tls="false",status_code="200",grpc_status="",classification="success"} 150
response_total{direction="inbound",target="a",tls="false",status_code="500",grpc_status="",classification="failure"} 4
response_total{direction="inbound",target="a",tls="true",status_code="200",grpc_status="",classification="success"} 46
response_total{direction="outbound",target="b",tls="false",status_code="200",grpc_status="",classification="success"} 5000
response_latency_seconds_bucket{le="0.001",direction="inbound",target="a",tls="false"} 70
response_latency_seconds_bucket{le="0.01",direction="inbound",target="a",tls="false"} 150
response_latency_seconds_bucket{le="+Inf",direction="inbound",target="a",tls="false"} 154
response_latency_seconds_bucket{le="0.001",direction="inbound",target="a",tls="true"} 46
response_latency_seconds_bucket{le="0.01",direction="inbound",target="a",tls="true"} 46
response_latency_seconds_bucket{le="+Inf",direction="inbound",target="a",tls="true"} 46
"#;

    fn counters(text: &str) -> Counters {
        Counters::from_scrape(&parse(text).expect("parses"), "inbound")
    }

    #[test]
    fn rates_from_two_scrapes() {
        let before = counters(EARLIER);
        assert_eq!((before.success, before.failure, before.tls), (100.0, 2.0, 0.0));
        let delta = counters(LATER).since(&before);
        assert_eq!((delta.success, delta.failure, delta.tls), (96.0, 2.0, 46.0));
        let stats = delta.stats(Duration::from_secs(2));
        assert_eq!(stats.requests, 98.0);
        assert_eq!(stats.rps, 49.0);
        assert!(close(stats.success_rate, 96.0 / 98.0));
        assert!(close(stats.tls_share, 46.0 / 98.0));
        // 66 of 98 within 1 ms: the median sits in (0, 1 ms].
        assert!(close(stats.p50_seconds, 0.001 * 49.0 / 66.0), "{:?}", stats.p50_seconds);
        // Rank 97.02 of 98 lies past the 10 ms bucket (96): in +Inf, so 10 ms.
        assert!(close(stats.p99_seconds, 0.01));
    }

    #[test]
    fn replicas_add_up() {
        let one = counters(LATER).since(&counters(EARLIER));
        let mut sum = Counters::default();
        sum.add(&one);
        sum.add(&one);
        assert_eq!(sum.requests(), 2.0 * one.requests());
        assert_eq!(sum.latency.total(), 2.0 * one.latency.total());
        assert_eq!(sum.stats(Duration::from_secs(1)).success_rate, one.stats(Duration::from_secs(1)).success_rate);
    }

    #[test]
    fn a_restart_counts_everything_as_new() {
        let delta = counters(EARLIER).since(&counters(LATER));
        assert_eq!(delta, counters(EARLIER));
    }

    #[test]
    fn no_traffic_means_no_rates() {
        let stats = Counters::default().stats(Duration::from_secs(2));
        assert_eq!(stats, Stats::default());
    }
}
