//! The golden-metrics table: rendering, and showing it live (redrawn in
//! place on a terminal, printed one after another otherwise).

use crate::prom::golden::Stats;
use serde::Serialize;
use std::io::{IsTerminal, Write};

/// One service's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The service's name.
    pub service: String,
    /// Replicas whose proxy answered the last scrape.
    pub replicas_up: usize,
    /// Replicas started.
    pub replicas: usize,
    /// Golden metrics over the period shown.
    pub stats: Stats,
}

/// A row for `--output json`: times in milliseconds, shares in 0..=1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonRow {
    /// The service's name.
    pub service: String,
    /// Replicas started.
    pub replicas: usize,
    /// Replicas whose proxy answered the last scrape.
    pub replicas_up: usize,
    /// Responses in the period.
    pub requests: u64,
    /// Responses per second.
    pub requests_per_second: f64,
    /// Share of successful responses.
    pub success_rate: Option<f64>,
    /// Median latency.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency.
    pub p99_ms: Option<f64>,
    /// Share of responses on mTLS.
    pub mtls_share: Option<f64>,
}

impl From<&Row> for JsonRow {
    fn from(r: &Row) -> Self {
        let ms = |s: Option<f64>| s.map(|s| (s * 1e6).round() / 1e3);
        JsonRow {
            service: r.service.clone(),
            replicas: r.replicas,
            replicas_up: r.replicas_up,
            requests: r.stats.requests.max(0.0).round() as u64,
            requests_per_second: (r.stats.rps * 100.0).round() / 100.0,
            success_rate: r.stats.success_rate,
            p50_ms: ms(r.stats.p50_seconds),
            p99_ms: ms(r.stats.p99_seconds),
            mtls_share: r.stats.tls_share,
        }
    }
}

const HEADERS: [&str; 7] = ["SERVICE", "REPLICAS", "REQ/S", "SUCCESS", "P50 (ms)", "P99 (ms)", "MTLS"];

fn percent(share: Option<f64>, decimals: usize) -> String {
    share.map_or_else(|| "-".to_string(), |s| format!("{:.*}%", decimals, s * 100.0))
}

fn millis(secs: Option<f64>) -> String {
    secs.map_or_else(|| "-".to_string(), |s| format!("{:.2}", s * 1000.0))
}

fn cells(r: &Row) -> [String; 7] {
    [
        r.service.clone(),
        format!("{}/{}", r.replicas_up, r.replicas),
        format!("{:.1}", r.stats.rps),
        percent(r.stats.success_rate, 2),
        millis(r.stats.p50_seconds),
        millis(r.stats.p99_seconds),
        percent(r.stats.tls_share, 0),
    ]
}

/// Renders `title` and an aligned table (service left-aligned, numbers right).
pub fn render(title: &str, rows: &[Row]) -> String {
    let body: Vec<[String; 7]> = rows.iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for line in &body {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        parts.join("   ").trim_end().to_string()
    };
    let mut out = format!("{title}\n");
    out.push_str(&line(&HEADERS.map(String::from)));
    out.push('\n');
    for cells in &body {
        out.push_str(&line(cells));
        out.push('\n');
    }
    out
}

/// Where live tables go: redrawn in place on a terminal, appended otherwise.
#[derive(Debug)]
pub struct Screen {
    stderr: bool,
    tty: bool,
    drawn: usize,
}

impl Screen {
    /// A screen on stdout, or on stderr when stdout is kept for JSON.
    pub fn new(stderr: bool) -> Self {
        let tty = if stderr { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
        Self { stderr, tty, drawn: 0 }
    }

    /// Shows `text` in place of the previous live table (on a terminal).
    pub fn show(&mut self, text: &str) {
        let mut frame = String::new();
        if self.tty && self.drawn > 0 {
            // Cursor up over the last table, then clear to the end of the screen.
            frame.push_str(&format!("\x1b[{}A\x1b[J", self.drawn));
        } else if !self.tty && self.drawn > 0 {
            frame.push('\n');
        }
        frame.push_str(text);
        self.drawn = text.lines().count();
        self.write(&frame);
    }

    /// Prints `text` below the live table; the next table starts afresh.
    pub fn print(&mut self, text: &str) {
        self.drawn = 0;
        self.write(text);
    }

    fn write(&self, text: &str) {
        // A closed pipe must not kill the demo before it cleans up.
        let _ = if self.stderr {
            std::io::stderr().lock().write_all(text.as_bytes())
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(service: &str, rps: f64, success: Option<f64>) -> Row {
        Row {
            service: service.to_string(),
            replicas_up: 2,
            replicas: 2,
            stats: Stats {
                requests: rps * 2.0,
                rps,
                success_rate: success,
                p50_seconds: success.map(|_| 0.00123),
                p99_seconds: success.map(|_| 0.0456),
                tls_share: success.map(|_| 0.0),
            },
        }
    }

    #[test]
    fn renders_an_aligned_table() {
        let table = render("last 2s", &[row("web", 50.0, Some(0.985)), row("authors", 100.5, Some(1.0))]);
        let expected = "\
last 2s
SERVICE   REPLICAS   REQ/S   SUCCESS   P50 (ms)   P99 (ms)   MTLS
web            2/2    50.0    98.50%       1.23      45.60     0%
authors        2/2   100.5   100.00%       1.23      45.60     0%
";
        assert_eq!(table, expected);
    }

    #[test]
    fn no_traffic_shows_dashes() {
        let table = render("t", &[row("books", 0.0, None)]);
        let last = table.lines().last().expect("a row");
        assert_eq!(last.split_whitespace().collect::<Vec<_>>(), ["books", "2/2", "0.0", "-", "-", "-", "-"]);
    }

    #[test]
    fn json_rows_use_milliseconds() {
        let j = JsonRow::from(&row("web", 50.0, Some(0.985)));
        assert_eq!(j.requests, 100);
        assert_eq!(j.p50_ms, Some(1.23));
        assert_eq!(j.p99_ms, Some(45.6));
        assert_eq!(j.success_rate, Some(0.985));
    }
}
