//! Rendering figures as table cells (µs, ms, ratios, rates, MiB) and rows
//! as aligned columns.

pub(in crate::bench) fn us(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() < 1e3 => format!("{v:.0} µs"),
        Some(v) if v.abs() < 1e6 => format!("{:.2} ms", v / 1e3),
        Some(v) => format!("{:.2} s", v / 1e6),
    }
}

pub(in crate::bench) fn delta_us(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 0.0 => format!("+{}", us(Some(v))),
        v => us(v),
    }
}

pub(in crate::bench) fn cpu(v: Option<f64>) -> String {
    v.map_or("-".into(), |c| format!("{c:.1} µs"))
}

pub(in crate::bench) fn delta_cpu(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 0.0 => format!("+{v:.1} µs"),
        v => cpu(v),
    }
}

pub(in crate::bench) fn ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("x{r:.3}"))
}

pub(in crate::bench) fn rate(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1e4 => format!("{:.1}k/s", v / 1e3),
        Some(v) => format!("{v:.0}/s"),
    }
}

pub(in crate::bench) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Rows of text cells laid out as aligned columns: the first `left` columns
/// left-aligned, the others right-aligned; a `None` row is a blank line.
pub(in crate::bench) fn layout(rows: &[Option<Vec<String>>], left: usize) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows.iter().flatten() {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(x) => *x = (*x).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let Some(row) = row else {
            out.push('\n');
            continue;
        };
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| if i < left { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}
