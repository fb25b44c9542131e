//! Parsing durations written as `250ms`, `10s`, `1.5s`, `5m`, `1h`.

use std::time::Duration;

/// A duration string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: write a number with a unit, like 500ms, 10s, 1.5s, 5m or 1h")]
pub struct InvalidDuration(String);

/// Parses a number followed by one of `us`, `ms`, `s`, `m`, `h`.
pub fn parse(s: &str) -> Result<Duration, InvalidDuration> {
    let bad = || InvalidDuration(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "10", "ms", "1.2.3s", "5 parsecs", "-1s"] {
            assert!(parse(s).is_err(), "{s} should not parse");
        }
    }
}
