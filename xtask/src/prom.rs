//! Reading the mesh processes' Prometheus metrics (text format), for the
//! bench's checks and the soak's certificate renewals.

/// The sum of every series of counter or gauge `name` (as written, e.g.
/// `tcp_open_total`) whose labels include all of `labels`, in Prometheus'
/// text format; 0 when none matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (series, value) = match rest.strip_prefix('{') {
                Some(inner) => split_labels(inner)?,
                None if rest.starts_with(' ') => (Vec::new(), rest),
                None => return None,
            };
            let wanted = labels.iter().all(|(k, v)| series.iter().any(|(sk, sv)| sk == k && sv == v));
            let value: f64 = value.split_whitespace().next()?.parse().ok()?;
            wanted.then_some(value)
        })
        .sum()
}

/// Splits `a="x",b="y"} 12` into its labels and what follows the `}`.
/// Values may hold escaped quotes and backslashes.
fn split_labels(inner: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut pairs = Vec::new();
    let mut rest = inner;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((pairs, after));
        }
        let (key, after_key) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        pairs.push((key.trim().to_string(), value));
        rest = &after_key[end + 1..];
    }
}

#[cfg(test)]
mod tests;
