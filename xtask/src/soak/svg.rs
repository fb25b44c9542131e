//! A tiny SVG line-chart renderer for the soak's plot: stacked panels
//! sharing a time axis, one polyline per series, vertical markers for
//! events. No plotting dependency: the chart is a few SVG elements.

use std::fmt::Write;

/// One line of a panel.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend.
    pub name: String,
    /// (seconds, value) points, in time order.
    pub points: Vec<(f64, f64)>,
}

/// One chart of the stack.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Its title, with the unit.
    pub title: String,
    /// Its lines.
    pub series: Vec<Series>,
}

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 200.0;
const GAP: f64 = 50.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 50.0;
const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

/// The plot area's width.
fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

/// Escapes text for an SVG text node or attribute.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" step (1, 2 or 5 × 10^n) giving about `ticks` intervals over `span`.
pub fn nice_step(span: f64, ticks: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// Renders `panels` over `[0, t_max]` seconds, with a dashed vertical line
/// and a label at each marker.
pub fn render(title: &str, panels: &[Panel], markers: &[(f64, String)], t_max: f64) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 10.0;
    let t_max = if t_max > 0.0 { t_max } else { 1.0 };
    let x_of = |t: f64| LEFT + (t / t_max).clamp(0.0, 1.0) * plot_width();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#, esc(title));
    let t_step = nice_step(t_max / 60.0, 10.0) * 60.0;
    for (i, panel) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_HEIGHT + GAP);
        let bottom = top + PANEL_HEIGHT;
        let max = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let y_step = nice_step(max.max(1e-9), 4.0);
        let y_max = if max > 0.0 { (max / y_step).ceil() * y_step } else { 1.0 };
        let y_of = |v: f64| bottom - (v / y_max).clamp(0.0, 1.0) * PANEL_HEIGHT;
        let _ = writeln!(s, r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#, top - 8.0, esc(&panel.title));
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##,
            plot_width()
        );
        let mut v = 0.0;
        while v <= y_max + y_step / 2.0 {
            let y = y_of(v);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_width(),
                LEFT - 5.0,
                y + 4.0,
                label(v)
            );
            v += y_step;
        }
        let mut t = 0.0;
        while t <= t_max + 1e-9 {
            let x = x_of(t);
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}m</text>"#,
                bottom + 14.0,
                label(t / 60.0)
            );
            t += t_step;
        }
        for (t, name) in markers {
            let x = x_of(*t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#888" stroke-dasharray="4,3"><title>{}</title></line>"##,
                esc(name)
            );
        }
        for (k, series) in panel.series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let points: Vec<String> = series
                .points
                .iter()
                .filter(|(t, v)| t.is_finite() && v.is_finite())
                .map(|&(t, v)| format!("{:.1},{:.1}", x_of(t), y_of(v)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
            let ly = top + 12.0 + k as f64 * 16.0;
            let lx = LEFT + plot_width() + 10.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                lx + 18.0,
                lx + 24.0,
                ly + 4.0,
                esc(&series.name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polyline_points(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.lines()
            .filter_map(|l| l.strip_prefix("<polyline")?.split("points=\"").nth(1)?.split('"').next())
            .map(|pts| {
                pts.split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').expect("x,y");
                        (x.parse().expect("x"), y.parse().expect("y"))
                    })
                    .collect()
            })
            .collect()
    }

    /// Catches a renderer that draws outside its panel, flips the y axis or
    /// loses a series: the maximum is at the panel's top, zero at its
    /// bottom, time runs left to right, and text is escaped.
    #[test]
    fn lines_fit_their_panels() {
        let panels = [
            Panel {
                title: "RSS <MiB>".into(),
                series: vec![
                    Series { name: "a&b".into(), points: vec![(0.0, 0.0), (60.0, 10.0), (120.0, 5.0)] },
                    Series { name: "c".into(), points: vec![(0.0, 2.0), (120.0, 2.0)] },
                ],
            },
            Panel { title: "fds".into(), series: vec![Series { name: "d".into(), points: vec![(30.0, 7.0)] }] },
        ];
        let svg = render("soak", &panels, &[(60.0, "restart".into())], 120.0);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("RSS &lt;MiB&gt;") && svg.contains("a&amp;b") && !svg.contains("<MiB>"));
        let lines = polyline_points(&svg);
        assert_eq!(lines.len(), 3);
        let a = &lines[0];
        assert_eq!(a[0], (LEFT, TOP + PANEL_HEIGHT));
        assert_eq!(a[1], (LEFT + plot_width() / 2.0, TOP));
        assert!(a[2].0 > a[1].0 && a[2].1 > a[1].1 && a[2].1 < a[0].1);
        // The second panel's line is inside the second panel.
        let d = lines[2][0];
        let top2 = TOP + PANEL_HEIGHT + GAP;
        assert!(d.1 >= top2 && d.1 <= top2 + PANEL_HEIGHT, "{d:?}");
        assert_eq!(svg.matches("stroke-dasharray").count(), 2, "one marker per panel");
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(30.0, 10.0), 5.0);
        assert_eq!(nice_step(6.0, 10.0), 1.0);
        assert_eq!(nice_step(130.0, 4.0), 50.0);
        assert_eq!(nice_step(0.0, 4.0), 1.0);
    }
}
