//! Parsers for the load generators' own reports: wrk's `--latency` text,
//! h2load's summary and per-request log, and oha's JSON; and the status line
//! of an HTTP response. (The proxies' Prometheus metrics: [`crate::prom`].)
//!
//! Each load-generator parser returns a [`Sample`]: what one run of one tool measured.

use anyhow::{Context, bail};

/// What one load-generator run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Responses with a 2xx/3xx status.
    pub ok: u64,
    /// Failed requests: error statuses, socket errors, timeouts.
    pub errors: u64,
    /// Completed requests per second, as the tool reports it.
    pub rps: f64,
    /// Median latency in microseconds, when the tool reports it.
    pub p50_us: Option<f64>,
    /// 90th-percentile latency in microseconds, when the tool reports it.
    pub p90_us: Option<f64>,
    /// 99th-percentile latency in microseconds, when the tool reports it.
    pub p99_us: Option<f64>,
}

/// A time as wrk and h2load print it (`66.00us`, `2.62ms`, `1.02s`, `1.5m`),
/// in microseconds.
fn micros(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(n * scale)
}

/// The unsigned integer just before `label` in a `N label, M label2` list.
fn count_before(list: &str, label: &str) -> Option<u64> {
    list.split(',').find_map(|item| {
        let mut words = item.split_whitespace();
        let n = words.next()?.parse().ok()?;
        (words.next()? == label).then_some(n)
    })
}

/// Parses `wrk --latency` output.
pub fn wrk(out: &str) -> anyhow::Result<Sample> {
    let mut requests = None;
    let mut rps = None;
    let (mut p50, mut p90, mut p99) = (None, None, None);
    let mut errors = 0;
    let mut non_2xx = 0;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = micros(v.trim());
        } else if let Some(v) = line.strip_prefix("90%") {
            p90 = micros(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = micros(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().context("bad wrk non-2xx count")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12033, write 0, timeout 0"
            for item in v.split(',') {
                let n: u64 = item.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                errors += n;
            }
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            requests = n.trim().parse::<u64>().ok();
        }
    }
    let (Some(requests), Some(rps)) = (requests, rps) else {
        bail!("not a wrk report (no \"requests in\" / \"Requests/sec:\" lines):\n{out}");
    };
    if p50.is_none() || p99.is_none() {
        bail!("wrk report without a latency distribution (run with --latency):\n{out}");
    }
    let ok = requests.saturating_sub(non_2xx);
    let p = |v: Option<f64>| v.filter(|_| ok > 0);
    Ok(Sample { ok, errors: errors + non_2xx, rps, p50_us: p(p50), p90_us: p(p90), p99_us: p(p99) })
}

/// Parses h2load's summary. It has no percentiles; see [`h2load_log`].
pub fn h2load(out: &str) -> anyhow::Result<Sample> {
    let mut rps = None;
    let mut counts = None;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("finished in ") {
            // "2.01s, 80930.00 req/s, 5.25MB/s"
            rps = v.split(',').nth(1).and_then(|s| s.trim().strip_suffix(" req/s")?.parse::<f64>().ok());
        } else if let Some(v) = line.strip_prefix("requests:") {
            // "N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            let get =
                |label| count_before(v, label).with_context(|| format!("no {label:?} count in h2load's {line:?}"));
            counts = Some((get("succeeded")?, get("failed")?, get("errored")?, get("timeout")?));
        }
    }
    let (Some(rps), Some((succeeded, failed, errored, timeout))) = (rps, counts) else {
        bail!("not an h2load report (no \"finished in\" / \"requests:\" lines):\n{out}");
    };
    // h2load counts errored and timed-out requests among the failed ones.
    let errors = failed.max(errored + timeout);
    Ok(Sample { ok: succeeded, errors, rps, ..Sample::default() })
}

/// Latency percentiles from h2load's `--log-file` (one request per line:
/// start time in µs since the epoch, status code, duration in µs). Returns
/// ([p50, p90, p99], requests with status < 400) over the successful requests.
pub fn h2load_log(log: &str) -> anyhow::Result<([Option<f64>; 3], u64)> {
    let mut ok = Vec::new();
    for (i, line) in log.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let parsed = match cols.as_slice() {
            [_, status, micros] => status.trim().parse::<i32>().ok().zip(micros.trim().parse::<f64>().ok()),
            _ => None,
        };
        let (status, micros) =
            parsed.with_context(|| format!("h2load log line {}: expected 3 columns: {line:?}", i + 1))?;
        if (200..400).contains(&status) {
            ok.push(micros);
        }
    }
    ok.sort_by(f64::total_cmp);
    Ok(([0.50, 0.90, 0.99].map(|q| percentile(&ok, q)), ok.len() as u64))
}

/// The `q` quantile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// Parses `oha --output-format json` (oha 1.x): latencies there are in seconds.
pub fn oha(out: &str) -> anyhow::Result<Sample> {
    let v: serde_json::Value = serde_json::from_str(out).context("oha did not print JSON")?;
    let num = |ptr: &str| v.pointer(ptr).and_then(serde_json::Value::as_f64);
    let rps = num("/summary/requestsPerSec").context("no summary.requestsPerSec in oha's JSON")?;
    let mut ok = 0;
    let mut bad_status = 0;
    if let Some(dist) = v.get("statusCodeDistribution").and_then(|d| d.as_object()) {
        for (code, n) in dist {
            let n = n.as_u64().unwrap_or(0);
            match code.parse::<u16>() {
                Ok(200..=399) => ok += n,
                _ => bad_status += n,
            }
        }
    }
    // Requests cut off when the duration ends are not failures.
    let socket_errors: u64 = v
        .get("errorDistribution")
        .and_then(|d| d.as_object())
        .map(|d| d.iter().filter(|(k, _)| !k.contains("deadline")).filter_map(|(_, n)| n.as_u64()).sum())
        .unwrap_or(0);
    let pct = |p: &str| num(&format!("/latencyPercentiles/{p}")).map(|s| s * 1e6).filter(|_| ok > 0);
    let (p50_us, p90_us, p99_us) = (pct("p50"), pct("p90"), pct("p99"));
    Ok(Sample { ok, errors: bad_status + socket_errors, rps, p50_us, p90_us, p99_us })
}

/// The status code of an HTTP/1.x response that starts `raw`.
pub fn http_status(raw: &[u8]) -> Option<u16> {
    let line_end = raw.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&raw[..line_end]).ok()?;
    let mut words = line.split_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/1."))?;
    words.next()?.parse().ok().filter(|c| (100..1000).contains(c))
}

#[cfg(test)]
mod tests;
