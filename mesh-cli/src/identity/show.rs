//! How `meshctl identity` shows things: paths for the shell, times and
//! spans for people, JSON for scripts.

use anyhow::anyhow;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A shell-ready rendering of a path for the "next" hints.
pub(super) fn shown(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@=".contains(&b)) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// RFC 3339 in UTC, to the second.
pub(super) fn utc(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// A rough span for people: `364 days`, `23h`, `5m`, `40s`.
pub(super) fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// `in 364 days` or `expired 3 days ago`.
pub(super) fn relative(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(left) => format!("in {}", span(left)),
        Err(e) => format!("expired {} ago", span(e.duration())),
    }
}

pub(super) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| anyhow!("cannot encode JSON: {e}"))?;
    println!("{text}");
    Ok(())
}
