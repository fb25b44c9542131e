//! Aligned text tables and the cells that go in them.

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Names.
    Left,
    /// Numbers.
    Right,
}

/// Renders `headers` and `rows` with columns three spaces apart; the last
/// column is never padded.
pub fn render(headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(headers.iter().zip(&widths))
            .map(|(c, ((_, align), &w))| match align {
                Align::Left => format!("{c:<w$}"),
                Align::Right => format!("{c:>w$}"),
            })
            .collect();
        let mut s = parts.join("   ").trim_end().to_string();
        s.push('\n');
        s
    };
    let mut out = line(&mut headers.iter().map(|(h, _)| *h));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// `98.50%`, or `-` without a value.
pub fn percent(share: Option<f64>, decimals: usize) -> String {
    share.map_or_else(|| "-".to_string(), |s| format!("{:.*}%", decimals, s * 100.0))
}

/// Seconds as milliseconds with two decimals, or `-`.
pub fn millis(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "-".to_string(), |s| format!("{:.2}", s * 1000.0))
}

/// An optional text, or `-`.
pub fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = render(
            &[("NAME", Align::Left), ("N", Align::Right), ("NOTE", Align::Left)],
            &[vec!["web".into(), "12".into(), "".into()], vec!["authors".into(), "3".into(), "x".into()]],
        );
        assert_eq!(t, "NAME       N   NOTE\nweb       12\nauthors    3   x\n");
        assert_eq!(percent(Some(0.985), 2), "98.50%");
        assert_eq!(percent(None, 2), "-");
        assert_eq!(millis(Some(0.00123)), "1.23");
        assert_eq!(or_dash(Some("")), "-");
    }
}
