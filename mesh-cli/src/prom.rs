//! Reading Prometheus metrics: a parser for the text exposition format (and
//! the OpenMetrics text the proxies serve), plus [`golden`], which turns
//! scrapes of the proxies' `/metrics` into golden metrics (request rate,
//! success rate, latency quantiles, mTLS share).
//!
//! The parser keeps samples only: `# HELP`, `# TYPE`, `# UNIT` and `# EOF`
//! lines, timestamps and exemplars are skipped.

pub mod golden;

use std::fmt;

/// One sample: a metric name, its labels and a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name as written, suffix included (`response_total`).
    pub name: String,
    /// Label pairs in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Every sample of one scrape, in exposition order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// The samples.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The samples named exactly `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

/// A line that is not valid exposition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses Prometheus (or OpenMetrics) text into its samples.
pub fn parse(text: &str) -> Result<Scrape, ParseError> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|message| ParseError { line: i + 1, message })?;
        samples.push(sample);
    }
    Ok(Scrape { samples })
}

/// A cursor over one line.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.rest = &self.rest[c.len_utf8()..];
        Some(c)
    }

    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        match self.bump() {
            Some(c) if c == want => Ok(()),
            Some(c) => Err(format!("expected {want:?}, found {c:?}")),
            None => Err(format!("expected {want:?}, found the end of the line")),
        }
    }

    /// Takes the longest prefix whose characters satisfy `ok` (the first
    /// character must also satisfy `first`).
    fn ident(&mut self, what: &str, first: fn(char) -> bool, ok: fn(char) -> bool) -> Result<&'a str, String> {
        match self.peek() {
            Some(c) if first(c) => {}
            Some(c) => return Err(format!("expected a {what}, found {c:?}")),
            None => return Err(format!("expected a {what}, found the end of the line")),
        }
        let end = self.rest.find(|c: char| !ok(c)).unwrap_or(self.rest.len());
        let (ident, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(ident)
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn is_label_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut cur = Cursor { rest: line };
    let name = cur.ident("metric name", is_name_start, is_name_char)?.to_string();
    cur.skip_spaces();
    let labels = if cur.peek() == Some('{') { parse_labels(&mut cur)? } else { Vec::new() };
    cur.skip_spaces();
    // The value ends at whitespace; a timestamp or an exemplar may follow.
    let token = cur.rest.split([' ', '\t']).next().unwrap_or_default();
    if token.is_empty() {
        return Err(format!("sample {name} has no value"));
    }
    let value = parse_value(token).ok_or_else(|| format!("invalid value {token:?} for {name}"))?;
    Ok(Sample { name, labels, value })
}

fn parse_labels(cur: &mut Cursor<'_>) -> Result<Vec<(String, String)>, String> {
    cur.expect('{')?;
    let mut labels = Vec::new();
    loop {
        cur.skip_spaces();
        if cur.peek() == Some('}') {
            cur.bump();
            return Ok(labels);
        }
        let key = cur.ident("label name", is_label_start, is_label_char)?.to_string();
        cur.skip_spaces();
        cur.expect('=')?;
        cur.skip_spaces();
        let value = parse_quoted(cur)?;
        labels.push((key, value));
        cur.skip_spaces();
        match cur.bump() {
            Some(',') => {}
            Some('}') => return Ok(labels),
            Some(c) => return Err(format!("expected ',' or '}}' after a label, found {c:?}")),
            None => return Err("unterminated label set".to_string()),
        }
    }
}

/// A double-quoted label value with `\\`, `\"` and `\n` escapes.
fn parse_quoted(cur: &mut Cursor<'_>) -> Result<String, String> {
    cur.expect('"')?;
    let mut out = String::new();
    loop {
        match cur.bump() {
            Some('"') => return Ok(out),
            Some('\\') => match cur.bump() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some(c) => {
                    // Unknown escapes are kept as written, as Prometheus does.
                    out.push('\\');
                    out.push(c);
                }
                None => return Err("unterminated label value".to_string()),
            },
            Some(c) => out.push(c),
            None => return Err("unterminated label value".to_string()),
        }
    }
}

/// Parses a sample value or an `le` bound: a float, `+Inf`, `-Inf` or `NaN`.
pub fn parse_value(token: &str) -> Option<f64> {
    match token {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if !self.labels.is_empty() {
            let pairs: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            write!(f, "{{{}}}", pairs.join(","))?;
        }
        write!(f, " {}", self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Sample {
        let scrape = parse(line).expect("parses");
        assert_eq!(scrape.samples.len(), 1, "{scrape:?}");
        scrape.samples.into_iter().next().expect("one sample")
    }

    #[test]
    fn counters_with_and_without_labels() {
        let text = "\
# HELP response HTTP responses sent.
# TYPE response counter
response_total{direction=\"inbound\",target=\"127.0.0.1:8080\",tls=\"false\",status_code=\"200\",grpc_status=\"\",classification=\"success\"} 17
process_cpu_seconds_total 0.25
# EOF
";
        let scrape = parse(text).expect("parses");
        assert_eq!(scrape.samples.len(), 2);
        let rsp = &scrape.samples[0];
        assert_eq!(rsp.name, "response_total");
        assert_eq!(rsp.value, 17.0);
        assert_eq!(rsp.label("direction"), Some("inbound"));
        assert_eq!(rsp.label("grpc_status"), Some(""));
        assert_eq!(rsp.label("classification"), Some("success"));
        assert_eq!(rsp.label("missing"), None);
        assert_eq!(scrape.samples[1], Sample { name: "process_cpu_seconds_total".into(), labels: vec![], value: 0.25 });
    }

    #[test]
    fn label_values_unescape() {
        let s = one(r#"m{a="quote \" here",b="back\\slash",c="new\nline",d="keep \q"} 1"#);
        assert_eq!(s.label("a"), Some("quote \" here"));
        assert_eq!(s.label("b"), Some("back\\slash"));
        assert_eq!(s.label("c"), Some("new\nline"));
        assert_eq!(s.label("d"), Some("keep \\q"));
    }

    #[test]
    fn commas_braces_and_spaces_inside_values() {
        let s = one(r#"m{ path="/a,b}c" , x = "y", } 2.5e3 1700000000000"#);
        assert_eq!(s.label("path"), Some("/a,b}c"));
        assert_eq!(s.label("x"), Some("y"));
        assert_eq!(s.value, 2500.0, "the timestamp is ignored");
    }

    #[test]
    fn special_values_and_exemplars() {
        assert_eq!(one("a +Inf").value, f64::INFINITY);
        assert_eq!(one("a -Inf").value, f64::NEG_INFINITY);
        assert!(one("a NaN").value.is_nan());
        let s = one(r#"lat_bucket{le="0.5"} 3 # {trace_id="abc"} 0.31 1.7e9"#);
        assert_eq!(s.value, 3.0);
    }

    #[test]
    fn histograms() {
        let text = "\
# TYPE response_latency_seconds histogram
response_latency_seconds_sum{direction=\"inbound\"} 0.05
response_latency_seconds_count{direction=\"inbound\"} 10
response_latency_seconds_bucket{le=\"0.001\",direction=\"inbound\"} 2
response_latency_seconds_bucket{le=\"1.0\",direction=\"inbound\"} 9
response_latency_seconds_bucket{le=\"+Inf\",direction=\"inbound\"} 10
";
        let scrape = parse(text).expect("parses");
        let buckets: Vec<(f64, f64)> = scrape
            .named("response_latency_seconds_bucket")
            .map(|s| (parse_value(s.label("le").expect("le")).expect("le value"), s.value))
            .collect();
        assert_eq!(buckets, vec![(0.001, 2.0), (1.0, 9.0), (f64::INFINITY, 10.0)]);
        assert_eq!(scrape.named("response_latency_seconds_count").count(), 1);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, needle) in [
            ("ok 1\nbad{a=\"x\" 1\n", "expected ',' or '}'"),
            ("ok 1\nbad{a=\"x 1\n", "unterminated"),
            ("ok 1\nbad{1a=\"x\"} 1\n", "label name"),
            ("ok 1\nbad\n", "no value"),
            ("ok 1\nbad one\n", "invalid value"),
        ] {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, 2, "{err}");
            assert!(err.message.contains(needle), "{err} lacks {needle:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        let s = one(r#"m{a="x \"y\""} 1.5"#);
        assert_eq!(one(&s.to_string()), s);
    }
}
