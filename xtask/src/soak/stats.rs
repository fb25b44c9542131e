//! What the soak samples, and the checks on it: pure functions over the
//! samples, so each verdict is unit-tested.

use std::time::Duration;

/// One process's resources at one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// Everything read at one moment of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    /// Requests attempted so far.
    pub sent: u64,
    /// Failed attempts so far.
    pub failed: u64,
    /// 99th percentile latency since the previous sample, ms.
    pub p99_ms: Option<f64>,
    /// Per process, in [`super::mesh::SoakMesh::names`] order.
    pub usage: Vec<Usage>,
    /// Successful certificate requests so far per proxy (client first; the
    /// first, join-token certificate included).
    pub cert_ok: Vec<u64>,
    /// Failed certificate requests of all proxies so far.
    pub cert_errors: u64,
    /// Control-plane restarts so far.
    pub restarts: u64,
    /// Endpoints in the registry file.
    pub endpoints: usize,
}

/// A resource's level at the start and at the end of the measured part of
/// a run (after warm-up).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// Median over the first window after warm-up.
    pub first: f64,
    /// Median over the last window.
    pub last: f64,
}

impl Level {
    /// The change from first to last, in percent of first.
    pub fn change_pct(&self) -> f64 {
        if self.first == 0.0 {
            if self.last == 0.0 { 0.0 } else { f64::INFINITY }
        } else {
            (self.last - self.first) / self.first * 100.0
        }
    }

    /// Within `pct` percent, or within `slack` in absolute terms (for small
    /// counts such as a handful of descriptors, where one is more than 10 %).
    pub fn flat(&self, pct: f64, slack: f64) -> bool {
        let diff = (self.last - self.first).abs();
        diff <= slack || diff <= self.first.abs() * pct / 100.0
    }
}

/// The measured windows: after `warmup`, the first `window` and the last
/// `window` of a run of `duration` (the window is a third of the measured
/// time, at most five minutes, so the two never overlap).
pub fn windows(duration: Duration, warmup: Duration) -> Option<((f64, f64), (f64, f64))> {
    let (d, w0) = (duration.as_secs_f64(), warmup.as_secs_f64());
    if d <= w0 {
        return None;
    }
    let w = ((d - w0) / 3.0).min(300.0);
    Some(((w0, w0 + w), (d - w, d)))
}

/// Median of the values whose time falls in `[from, to]`; `None` if none does.
pub fn median_in(points: &[(f64, f64)], (from, to): (f64, f64)) -> Option<f64> {
    let mut v: Vec<f64> = points.iter().filter(|(t, _)| *t >= from && *t <= to).map(|(_, v)| *v).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The level of a series over the two windows.
pub fn level(points: &[(f64, f64)], windows: ((f64, f64), (f64, f64))) -> Option<Level> {
    Some(Level { first: median_in(points, windows.0)?, last: median_in(points, windows.1)? })
}

/// The `q` quantile (0..=1) of `values` (sorted here), in the values' unit.
pub fn quantile(values: &mut [u32], q: f64) -> Option<u32> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let idx = ((values.len() - 1) as f64 * q).round() as usize;
    values.get(idx).copied()
}

/// The least number of renewals a proxy must have made in `duration` when
/// it renews every `rotation`: one per rotation, less two for the first
/// period and for a renewal delayed by a control-plane restart; at least one.
pub fn min_renewals(duration: Duration, rotation: Duration) -> u64 {
    let expected = duration.as_secs() / rotation.as_secs().max(1);
    expected.saturating_sub(2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn windows_after_warmup() {
        assert_eq!(windows(30 * MIN, 2 * MIN), Some(((120.0, 420.0), (1500.0, 1800.0))));
        assert_eq!(windows(6 * MIN, MIN), Some(((60.0, 160.0), (260.0, 360.0))));
        assert_eq!(windows(MIN, MIN), None);
    }

    #[test]
    fn medians() {
        let pts = [(0.0, 100.0), (10.0, 1.0), (20.0, 3.0), (30.0, 2.0), (40.0, 50.0)];
        assert_eq!(median_in(&pts, (10.0, 30.0)), Some(2.0));
        assert_eq!(median_in(&pts, (10.0, 20.0)), Some(2.0));
        assert_eq!(median_in(&pts, (41.0, 50.0)), None);
    }

    /// Catches a check that compares single samples (one spike fails it) or
    /// that misses a steady growth: a leak of 1 % a minute over 30 minutes fails.
    #[test]
    fn flatness() {
        let w = windows(30 * MIN, 2 * MIN).expect("windows");
        let mut steady: Vec<(f64, f64)> = (0..180).map(|i| (f64::from(i) * 10.0, 1000.0)).collect();
        steady[20].1 = 5000.0; // a spike in the first window
        let l = level(&steady, w).expect("level");
        assert!(l.flat(10.0, 0.0), "{l:?}");
        let leaking: Vec<(f64, f64)> =
            (0..180).map(|i| (f64::from(i) * 10.0, 1000.0 * (1.0 + f64::from(i) / 600.0))).collect();
        let l = level(&leaking, w).expect("level");
        assert!(!l.flat(10.0, 0.0), "{l:?}");
        assert!(l.change_pct() > 10.0);
        // Small counts: 20 → 22 descriptors is 10 %, within a slack of 2.
        let fds = Level { first: 20.0, last: 23.0 };
        assert!(!fds.flat(10.0, 2.0) && Level { first: 20.0, last: 22.0 }.flat(10.0, 2.0));
    }

    #[test]
    fn renewals_expected() {
        assert_eq!(min_renewals(30 * MIN, MIN), 28);
        assert_eq!(min_renewals(6 * MIN, Duration::from_secs(30)), 10);
        assert_eq!(min_renewals(MIN, MIN), 1);
    }

    #[test]
    fn quantiles() {
        let mut v = vec![5, 1, 4, 2, 3];
        assert_eq!(quantile(&mut v, 0.5), Some(3));
        assert_eq!(quantile(&mut v, 1.0), Some(5));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
