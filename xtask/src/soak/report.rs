//! The soak's table (one row per report interval), its CSV of every
//! sample, and its plot.

use super::stats::Sample;
use crate::svg::{self, Axis, Panel, Series};
use std::fmt::Write;

/// `mm:ss`.
pub fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{:02}:{:02}", s / 60, s % 60)
}

/// The table's header for processes `names`.
pub fn header(names: &[String]) -> String {
    let mut s = format!("{:>6} {:>8} {:>8} {:>8}", "time", "requests", "failures", "p99 ms");
    for n in names {
        let _ = write!(s, " {:>13}", format!("{n} MiB/fd"));
    }
    let _ = write!(s, " {:>8} {:>8} {:>9}", "renewals", "restarts", "endpoints");
    s
}

/// One row: what happened between `prev` and `cur` (requests, failures,
/// the worst p99 of the samples in between), and the levels at `cur`.
pub fn row(prev: &Sample, cur: &Sample, between: &[Sample], proxies: usize) -> String {
    let p99 = between.iter().filter_map(|s| s.p99_ms).fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let mut s = format!(
        "{:>6} {:>8} {:>8} {:>8}",
        clock(cur.t),
        cur.sent - prev.sent,
        cur.failed - prev.failed,
        p99.map_or("-".into(), |v| format!("{v:.1}"))
    );
    for u in &cur.usage {
        let _ = write!(s, " {:>13}", format!("{:.1}/{}", u.rss_kib as f64 / 1024.0, u.fds));
    }
    let _ = write!(s, " {:>8} {:>8} {:>9}", renewals(cur, proxies), cur.restarts, cur.endpoints);
    s
}

/// Renewals of all proxies at `s`: successful certificate requests less each
/// proxy's first (join-token) certificate.
pub fn renewals(s: &Sample, proxies: usize) -> u64 {
    s.cert_ok.iter().sum::<u64>().saturating_sub(proxies as u64)
}

/// Every sample as CSV.
pub fn csv(names: &[String], samples: &[Sample]) -> String {
    let mut s = String::from("t_secs,sent,failed,p99_ms");
    for n in names {
        let _ = write!(s, ",{n}_rss_kib,{n}_fds");
    }
    s.push_str(",cert_ok,cert_errors,restarts,endpoints\n");
    for x in samples {
        let _ =
            write!(s, "{:.1},{},{},{}", x.t, x.sent, x.failed, x.p99_ms.map_or(String::new(), |v| format!("{v:.2}")));
        for u in &x.usage {
            let _ = write!(s, ",{},{}", u.rss_kib, u.fds);
        }
        let _ = writeln!(s, ",{},{},{},{}", x.cert_ok.iter().sum::<u64>(), x.cert_errors, x.restarts, x.endpoints);
    }
    s
}

/// The plot: request rate and failures, RSS and descriptors per process,
/// renewals and registry endpoints; a marker at each control-plane restart.
pub fn plot(title: &str, names: &[String], samples: &[Sample], restarts: &[f64], t_max: f64, proxies: usize) -> String {
    let rate = |f: fn(&Sample) -> u64| -> Vec<(f64, f64)> {
        samples.windows(2).map(|w| (w[1].t, (f(&w[1]) - f(&w[0])) as f64 / (w[1].t - w[0].t).max(1e-3))).collect()
    };
    let per_process = |f: fn(&super::stats::Usage) -> f64| -> Vec<Series> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Series {
                name: n.clone(),
                points: samples.iter().filter_map(|s| Some((s.t, f(s.usage.get(i)?)))).collect(),
            })
            .collect()
    };
    let time = Axis::Minutes { t_max };
    let panels = [
        Panel {
            title: "requests per second".into(),
            axis: time.clone(),
            series: vec![
                Series { name: "attempted".into(), points: rate(|s| s.sent) },
                Series { name: "failed".into(), points: rate(|s| s.failed) },
            ],
        },
        Panel { title: "RSS (MiB)".into(), axis: time.clone(), series: per_process(|u| u.rss_kib as f64 / 1024.0) },
        Panel { title: "open file descriptors".into(), axis: time.clone(), series: per_process(|u| u.fds as f64) },
        Panel {
            title: "certificate renewals (all proxies), registry endpoints".into(),
            axis: time,
            series: vec![
                Series {
                    name: "renewals".into(),
                    points: samples.iter().map(|s| (s.t, renewals(s, proxies) as f64)).collect(),
                },
                Series {
                    name: "endpoints".into(),
                    points: samples.iter().map(|s| (s.t, s.endpoints as f64)).collect(),
                },
            ],
        },
    ];
    let markers: Vec<(f64, String)> =
        restarts.iter().map(|&t| (t, format!("control-plane restart at {}", clock(t)))).collect();
    svg::render(title, &panels, &markers)
}

#[cfg(test)]
mod tests {
    use super::super::stats::Usage;
    use super::*;

    fn sample(t: f64, sent: u64, failed: u64) -> Sample {
        Sample {
            t,
            sent,
            failed,
            p99_ms: Some(t / 10.0),
            usage: vec![Usage { rss_kib: 2048, fds: 12 }, Usage { rss_kib: 10240, fds: 30 }],
            cert_ok: vec![3, 4],
            cert_errors: 1,
            restarts: 1,
            endpoints: 2,
        }
    }

    #[test]
    fn rows_are_differences() {
        let names = vec!["control".to_string(), "client".to_string()];
        let (a, b, c) = (sample(0.0, 0, 0), sample(30.0, 3000, 1), sample(60.0, 6000, 1));
        let r = row(&a, &c, &[b, c.clone()], 2);
        let cols: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(cols, ["01:00", "6000", "1", "6.0", "2.0/12", "10.0/30", "5", "1", "2"]);
        assert_eq!(header(&names).split_whitespace().count(), 4 + 2 * 2 + 3 + 1);
        let csv = csv(&names, &[a, c]);
        assert_eq!(csv.lines().nth(2), Some("60.0,6000,1,6.00,2048,12,10240,30,7,1,1,2"));
    }

    #[test]
    fn clocks() {
        assert_eq!(clock(0.0), "00:00");
        assert_eq!(clock(1799.6), "30:00");
        assert_eq!(clock(125.0), "02:05");
    }
}
