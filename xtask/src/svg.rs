//! The one SVG chart renderer of xtask's reports: the soak's time series
//! (`soak.svg`) and the bench's latency and CPU per path (`latency.svg`,
//! `cpu.svg`). A chart is a title over stacked panels; each panel has a y
//! axis from 0 with a grid, a legend, and either one polyline per series over
//! a time axis or grouped bars (one per series, labelled with its value) over
//! named groups. No plotting dependency: a chart is a few SVG elements.

use std::fmt::Write;

/// One line (or one bar per group) of a panel.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend.
    pub name: String,
    /// (x, value) points: x in seconds on a [`Axis::Minutes`] panel (in
    /// time order), the group's index on a [`Axis::Groups`] panel.
    pub points: Vec<(f64, f64)>,
}

/// What a panel's x axis is, and so how its series are drawn.
#[derive(Debug, Clone)]
pub enum Axis {
    /// Seconds from 0 to `t_max`, labelled in minutes; series are polylines
    /// and the chart's markers are drawn across the panel.
    Minutes {
        /// The end of the axis, in seconds.
        t_max: f64,
    },
    /// Named groups side by side; each series has a bar in each group it has a point for.
    Groups(Vec<String>),
}

/// One chart of the stack.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Its title, with the unit.
    pub title: String,
    /// Its x axis.
    pub axis: Axis,
    /// Its lines or bars.
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

/// A value as an axis or bar label: whole numbers from 100 up, one decimal below.
pub fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// Renders `panels` stacked under `title`, with a dashed vertical line at
/// each marker (seconds) on the time panels.
pub fn render(title: &str, panels: &[Panel], markers: &[(f64, String)]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#, esc(title));
    for (i, panel) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_HEIGHT + GAP);
        let frame = Frame::draw(&mut s, panel, top);
        match &panel.axis {
            Axis::Minutes { t_max } => frame.lines(&mut s, panel, *t_max, markers),
            Axis::Groups(groups) => frame.bars(&mut s, panel, groups),
        }
        for (k, series) in panel.series.iter().enumerate() {
            let (lx, ly) = (LEFT + plot_width() + 10.0, top + 12.0 + k as f64 * 16.0);
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                lx + 18.0,
                COLORS[k % COLORS.len()],
                lx + 24.0,
                ly + 4.0,
                esc(&series.name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A panel's frame and y scale, once its title, border and grid are drawn.
struct Frame {
    top: f64,
    bottom: f64,
    y_max: f64,
}

impl Frame {
    fn draw(s: &mut String, panel: &Panel, top: f64) -> Self {
        let bottom = top + PANEL_HEIGHT;
        let max = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let y_step = nice_step(max.max(1e-9), 4.0);
        let y_max = if max > 0.0 { (max / y_step).ceil() * y_step } else { 1.0 };
        let frame = Self { top, bottom, y_max };
        let _ = writeln!(s, r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#, top - 8.0, esc(&panel.title));
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##,
            plot_width()
        );
        let mut v = 0.0;
        while v <= y_max + y_step / 2.0 {
            let y = frame.y_of(v);
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
        frame
    }

    fn y_of(&self, v: f64) -> f64 {
        self.bottom - (v / self.y_max).clamp(0.0, 1.0) * PANEL_HEIGHT
    }

    /// Minute ticks, markers and one polyline per series.
    fn lines(&self, s: &mut String, panel: &Panel, t_max: f64, markers: &[(f64, String)]) {
        let t_max = if t_max > 0.0 { t_max } else { 1.0 };
        let x_of = |t: f64| LEFT + (t / t_max).clamp(0.0, 1.0) * plot_width();
        let t_step = nice_step(t_max / 60.0, 10.0) * 60.0;
        let mut t = 0.0;
        while t <= t_max + 1e-9 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}m</text>"#,
                x_of(t),
                self.bottom + 14.0,
                label(t / 60.0)
            );
            t += t_step;
        }
        for (t, name) in markers {
            let x = x_of(*t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#888" stroke-dasharray="4,3"><title>{}</title></line>"##,
                self.top,
                self.bottom,
                esc(name)
            );
        }
        for (k, series) in panel.series.iter().enumerate() {
            let points: Vec<String> = series
                .points
                .iter()
                .filter(|(t, v)| t.is_finite() && v.is_finite())
                .map(|&(t, v)| format!("{:.1},{:.1}", x_of(t), self.y_of(v)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                COLORS[k % COLORS.len()],
                points.join(" ")
            );
        }
    }

    /// Group names under the axis and a bar per series and group, its
    /// value written above it (and in its tooltip, with the series' name).
    fn bars(&self, s: &mut String, panel: &Panel, groups: &[String]) {
        let group_width = plot_width() / groups.len().max(1) as f64;
        let bar_width = group_width * 0.8 / panel.series.len().max(1) as f64;
        for (i, name) in groups.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                LEFT + (i as f64 + 0.5) * group_width,
                self.bottom + 14.0,
                esc(name)
            );
        }
        for (k, series) in panel.series.iter().enumerate() {
            for &(g, v) in series.points.iter().filter(|(g, v)| v.is_finite() && *g >= 0.0) {
                let x = LEFT + g.floor() * group_width + group_width * 0.1 + k as f64 * bar_width;
                let y = self.y_of(v);
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                    bar_width * 0.9,
                    self.bottom - y,
                    COLORS[k % COLORS.len()],
                    esc(&series.name),
                    label(v),
                    x + bar_width * 0.45,
                    y - 3.0,
                    label(v)
                );
            }
        }
    }
}

/// Checks that `svg` is well-formed XML as this module writes it: every tag
/// closed in order, attributes quoted, `&` only in entities. For tests (here
/// and of the charts built on this module).
#[cfg(test)]
pub fn well_formed(svg: &str) -> Result<(), String> {
    let mut open: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let text = &rest[..start];
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            if !["&amp;", "&lt;", "&gt;", "&quot;"].iter().any(|e| entity.starts_with(e)) {
                return Err(format!("a bare & in {text:?}"));
            }
        }
        let end = rest[start..].find('>').ok_or("an unclosed tag")? + start;
        let tag = &rest[start + 1..end];
        if !tag.matches('"').count().is_multiple_of(2) {
            return Err(format!("a broken tag <{tag}>"));
        }
        if let Some(name) = tag.strip_prefix('/') {
            match open.pop() {
                Some(o) if o == name => {}
                o => return Err(format!("</{name}> closes {o:?}")),
            }
        } else if !tag.ends_with('/') {
            open.push(tag.split_whitespace().next().unwrap_or(""));
        }
        rest = &rest[end + 1..];
    }
    match (open.as_slice(), rest.trim()) {
        ([], "") => Ok(()),
        (o, r) => Err(format!("left open: {o:?}, trailing {r:?}")),
    }
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

    fn minutes(title: &str, series: Vec<Series>) -> Panel {
        Panel { title: title.into(), axis: Axis::Minutes { t_max: 120.0 }, series }
    }

    /// Catches a renderer that draws outside its panel, flips the y axis or
    /// loses a series: the maximum is at the panel's top, zero at its
    /// bottom, time runs left to right, and text is escaped.
    #[test]
    fn lines_fit_their_panels() {
        let panels = [
            minutes(
                "RSS <MiB>",
                vec![
                    Series { name: "a&b".into(), points: vec![(0.0, 0.0), (60.0, 10.0), (120.0, 5.0)] },
                    Series { name: "c".into(), points: vec![(0.0, 2.0), (120.0, 2.0)] },
                ],
            ),
            minutes("fds", vec![Series { name: "d".into(), points: vec![(30.0, 7.0)] }]),
        ];
        let svg = render("soak", &panels, &[(60.0, "restart".into())]);
        assert_eq!(well_formed(&svg), Ok(()));
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

    /// Catches bars that lose a series or a group, put a group's bar in
    /// another group, scale the tallest bar off the panel, or lose their values.
    #[test]
    fn bars_per_group_and_series() {
        let panel = Panel {
            title: "p99 (µs)".into(),
            axis: Axis::Groups(vec!["1000 req/s".into(), "max rate".into()]),
            series: vec![
                Series { name: "direct".into(), points: vec![(0.0, 100.0), (1.0, 250.0)] },
                Series { name: "mesh".into(), points: vec![(0.0, 400.0)] },
            ],
        };
        let svg = render("latency", &[panel], &[(5.0, "not drawn on groups".into())]);
        assert_eq!(well_formed(&svg), Ok(()));
        let bars: Vec<(f64, f64, &str)> = svg
            .lines()
            .filter(|l| l.starts_with("<rect x="))
            .filter(|l| l.contains("<title>"))
            .map(|l| {
                let attr = |a: &str| -> f64 {
                    l.split(&format!(" {a}=\"")).nth(1).and_then(|v| v.split('"').next()).expect(a).parse().expect(a)
                };
                let title = l.split("<title>").nth(1).and_then(|t| t.split("</title>").next()).expect("title");
                (attr("x"), attr("y"), title)
            })
            .collect();
        let titles: Vec<&str> = bars.iter().map(|b| b.2).collect();
        assert_eq!(titles, ["direct: 100", "direct: 250", "mesh: 400"]);
        // Group 0's bars left of the middle, group 1's right of it.
        let middle = LEFT + plot_width() / 2.0;
        assert!(bars[0].0 < middle && bars[2].0 < middle && bars[1].0 > middle, "{bars:?}");
        assert_eq!(bars[2].1, TOP, "the tallest bar reaches the top");
        assert!(svg.contains(">1000 req/s</text>") && svg.contains(">max rate</text>"));
        assert!(!svg.contains("stroke-dasharray"), "markers only on time panels");
    }

    /// Catches the checker itself accepting what a browser would refuse.
    #[test]
    fn the_checker_refuses_broken_xml() {
        assert_eq!(well_formed("<svg><rect/></svg>\n"), Ok(()));
        assert!(well_formed("<svg><text>a</svg>").is_err());
        assert!(well_formed("<svg><text>a & b</text></svg>").is_err());
        assert!(well_formed("<svg><rect x=\"1/></svg>").is_err());
        assert!(well_formed("<svg>").is_err());
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(30.0, 10.0), 5.0);
        assert_eq!(nice_step(6.0, 10.0), 1.0);
        assert_eq!(nice_step(130.0, 4.0), 50.0);
        assert_eq!(nice_step(0.0, 4.0), 1.0);
    }
}
