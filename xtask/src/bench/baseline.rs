//! `--baseline FILE`: this run against a stored one (its `results.json`, or
//! the results folder holding it), row by row: each table's rate, p50, p99
//! and CPU per unit of each path at each load, and each path's largest
//! proxy RSS idle and after all runs, as new ÷ old. A row is flagged when
//! the ratio leaves the noise band: the larger spread between rounds
//! ((max − min) ÷ median of the per-round figures) of either run, at least
//! [`MIN_NOISE`]. Pure functions over the two JSON documents.

use super::report::format::layout;
use anyhow::Context;
use serde_json::Value;
use std::path::Path;

/// The narrowest noise band: single-round runs have no measured spread.
pub const MIN_NOISE: f64 = 0.05;

/// Reads a stored run: `results.json`, or a results folder that has one.
pub fn load(path: &Path) -> anyhow::Result<Value> {
    let file = if path.is_dir() { path.join("results.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the baseline {}: give a results.json or its folder", file.display()))?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    if !doc["sections"].is_array() {
        anyhow::bail!("{} has no `sections`: not the results of `cargo xtask bench`", file.display());
    }
    Ok(doc)
}

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One compared figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Section key, load (e.g. `3000/s`, `max`, `memory`), path key, figure.
    pub what: [String; 4],
    pub old: f64,
    pub new: f64,
    /// new ÷ old.
    pub ratio: f64,
    /// The band the ratio is judged against.
    pub noise: f64,
    /// `worse`, `better` or empty.
    pub flag: &'static str,
}

fn flag(ratio: f64, noise: f64, better: Better) -> &'static str {
    let (up, down) = (ratio > 1.0 + noise, ratio < 1.0 / (1.0 + noise));
    match (better, up, down) {
        (Better::Higher, true, _) | (Better::Lower, _, true) => "better",
        (Better::Higher, _, true) | (Better::Lower, true, _) => "worse",
        _ => "",
    }
}

/// (max − min) ÷ median of `values`; 0 with fewer than two.
pub fn spread(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.len() < 2 {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    if median <= 0.0 { 0.0 } else { (v[v.len() - 1] - v[0]) / median }
}

/// A scenario's load, as a row label: `3000/s` or `max`.
fn load_label(sc: &Value) -> String {
    match sc["rate"].as_u64() {
        Some(r) => format!("{r}/s"),
        None => "max".into(),
    }
}

/// Per-round figures of `variant` in `sc`: rate, p50, p99, proxies' CPU µs per unit.
fn per_round(sc: &Value, variant: &str, clk_tck: f64) -> [Vec<f64>; 4] {
    let mut out: [Vec<f64>; 4] = Default::default();
    for run in sc["runs"].as_array().into_iter().flatten().filter(|r| r["variant"] == variant) {
        let get = |k: &str| run[k].as_f64();
        for (i, v) in [get("rate"), get("p50_us"), get("p99_us")].into_iter().enumerate() {
            out[i].extend(v);
        }
        let ticks = run["cpu_ticks"]["client_proxy"].as_f64().unwrap_or(0.0)
            + run["cpu_ticks"]["server_proxy"].as_f64().unwrap_or(0.0);
        if let Some(ok) = run["ok"].as_f64().filter(|ok| *ok > 0.0) {
            out[3].push(ticks * 1e6 / clk_tck / ok);
        }
    }
    out
}

/// The largest `rss_kib` of a path's proxies in a memory map (`memory`, `idle_memory`).
fn largest_rss(memory: &Value, variant: &str) -> Option<f64> {
    let m = &memory[variant];
    ["client_proxy", "server_proxy"].iter().filter_map(|p| m[p]["rss_kib"].as_f64()).reduce(f64::max)
}

/// Every figure present in both runs, new ÷ old, in the new run's order.
pub fn compare(old: &Value, new: &Value) -> Vec<Row> {
    let clk = |d: &Value| d["settings"]["clk_tck"].as_f64().filter(|c| *c > 0.0).unwrap_or(100.0);
    let (clk_old, clk_new) = (clk(old), clk(new));
    let sections = |d: &Value| d["sections"].as_array().cloned().unwrap_or_default();
    let old_sections = sections(old);
    let mut rows = Vec::new();
    let mut push = |what: [&str; 4], o: Option<f64>, n: Option<f64>, noise: f64, better| {
        if let (Some(o), Some(n)) = (o, n)
            && o > 0.0
        {
            let ratio = n / o;
            let what = what.map(String::from);
            rows.push(Row { what, old: o, new: n, ratio, noise, flag: flag(ratio, noise, better) });
        }
    };
    for ns in sections(new) {
        let key = ns["key"].as_str().unwrap_or("?");
        let Some(os) = old_sections.iter().find(|s| s["key"] == key) else { continue };
        for nsc in ns["scenarios"].as_array().into_iter().flatten() {
            let label = load_label(nsc);
            let Some(osc) = os["scenarios"].as_array().into_iter().flatten().find(|s| load_label(s) == label) else {
                continue;
            };
            for variant in ns["variants"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                let (nv, ov) = (&nsc["variants"][variant], &osc["variants"][variant]);
                let (rn, ro) = (per_round(nsc, variant, clk_new), per_round(osc, variant, clk_old));
                let noise = |i: usize| spread(&rn[i]).max(spread(&ro[i])).max(MIN_NOISE);
                let figures = [
                    ("rate", ov["rate"].as_f64(), nv["rate"].as_f64(), Better::Higher),
                    ("p50", ov["p50_us"].as_f64(), nv["p50_us"].as_f64(), Better::Lower),
                    ("p99", ov["p99_us"].as_f64(), nv["p99_us"].as_f64(), Better::Lower),
                    (
                        "CPU/unit, proxies",
                        ov["cpu_us_per_unit"]["proxies"].as_f64(),
                        nv["cpu_us_per_unit"]["proxies"].as_f64(),
                        Better::Lower,
                    ),
                ];
                for (i, (name, o, n, better)) in figures.into_iter().enumerate() {
                    push([key, &label, variant, name], o, n, noise(i), better);
                }
            }
        }
        for (field, name) in [("idle_memory", "RSS idle (largest)"), ("memory", "RSS after runs (largest)")] {
            for variant in ns["variants"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                let (o, n) = (largest_rss(&os[field], variant), largest_rss(&ns[field], variant));
                push([key, "memory", variant, name], o, n, MIN_NOISE, Better::Lower);
            }
        }
    }
    rows
}

/// The comparison as aligned text, with a count of flagged rows.
pub fn render(rows: &[Row], baseline: &Path) -> String {
    let mut lines: Vec<Option<Vec<String>>> = vec![Some(
        ["table", "load", "path", "figure", "baseline", "now", "now ÷ baseline", "noise ±", ""]
            .map(String::from)
            .to_vec(),
    )];
    for r in rows {
        let mut cells = r.what.to_vec();
        cells.extend([
            format!("{:.1}", r.old),
            format!("{:.1}", r.new),
            format!("×{:.2}", r.ratio),
            format!("{:.0}%", r.noise * 100.0),
            r.flag.to_string(),
        ]);
        lines.push(Some(cells));
    }
    let worse = rows.iter().filter(|r| r.flag == "worse").count();
    format!(
        "\n== Against the baseline {} (latency in µs, rate per second, RSS in KiB) ==\n{}{worse} figure(s) worse beyond the noise\n",
        baseline.display(),
        layout(&lines, 4)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(variant: &str, rate: f64, p99: f64, ticks: u64, ok: u64) -> Value {
        json!({ "variant": variant, "rate": rate, "p50_us": p99 / 2.0, "p99_us": p99, "ok": ok,
                "cpu_ticks": { "client_proxy": ticks, "server_proxy": ticks, "nginx": 1 } })
    }

    fn doc(rate: f64, p99: f64, cpu: f64, rss: u64, runs: Vec<Value>) -> Value {
        let stats = json!({ "rate": rate, "p50_us": p99 / 2.0, "p99_us": p99, "cpu_us_per_unit": { "proxies": cpu } });
        let mem = json!({ "mtls": { "client_proxy": { "rss_kib": rss, "hwm_kib": rss }, "server_proxy": null } });
        json!({
            "settings": { "clk_tck": 100 },
            "sections": [{
                "key": "http1",
                "variants": ["baseline", "mtls"],
                "scenarios": [{ "mode": "max_rate", "rate": null, "variants": { "mtls": stats }, "runs": runs }],
                "memory": mem,
                "idle_memory": mem,
            }],
        })
    }

    /// Catches an inverted ratio (old ÷ new), a flag in the wrong direction
    /// (a higher rate called worse, a higher p99 called better), or a
    /// change inside the noise flagged at all.
    #[test]
    fn ratios_and_flags_follow_each_figures_direction() {
        let old = doc(10_000.0, 2000.0, 100.0, 10_000, vec![]);
        let new = doc(12_000.0, 3000.0, 102.0, 9_000, vec![]);
        let rows = compare(&old, &new);
        let find = |fig: &str| rows.iter().find(|r| r.what[3] == fig && r.what[2] == "mtls").expect(fig).clone();
        let rate = find("rate");
        assert_eq!((rate.ratio, rate.flag, rate.what[1].as_str()), (1.2, "better", "max"));
        assert_eq!((find("p99").ratio, find("p99").flag), (1.5, "worse"));
        assert_eq!(find("CPU/unit, proxies").flag, "", "2% is inside the 5% band");
        let idle = find("RSS idle (largest)");
        assert_eq!((idle.old, idle.new, idle.flag), (10_000.0, 9_000.0, "better"));
        let text = render(&rows, Path::new("old.json"));
        assert!(text.contains("×1.50") && text.contains("2 figure(s) worse"), "{text}");
    }

    /// Catches a noise band that ignores the spread between rounds (a 20%
    /// change flagged although rounds differed by 50%), or a wrong spread.
    #[test]
    fn the_measured_spread_widens_the_band() {
        assert_eq!(spread(&[1.0]), 0.0);
        assert!((spread(&[80.0, 100.0, 130.0]) - 0.5).abs() < 1e-9);
        let runs = vec![run("mtls", 8000.0, 2000.0, 10, 1000), run("mtls", 12_000.0, 2000.0, 10, 1000)];
        let old = doc(10_000.0, 2000.0, 100.0, 10_000, runs);
        let new = doc(8_000.0, 2000.0, 100.0, 10_000, vec![]);
        let rate = compare(&old, &new).into_iter().find(|r| r.what[3] == "rate").expect("rate");
        assert!((rate.noise - 0.4).abs() < 1e-9, "{rate:?}");
        assert_eq!(rate.flag, "", "a 20% drop is within the rounds' 40% spread");
    }

    /// Catches rows for sections or loads the baseline does not have.
    #[test]
    fn only_figures_in_both_runs() {
        let old = doc(10_000.0, 2000.0, 100.0, 10_000, vec![]);
        let mut new = old.clone();
        new["sections"][0]["key"] = json!("grpc");
        assert!(compare(&old, &new).is_empty());
        let mut fixed = old.clone();
        fixed["sections"][0]["scenarios"][0]["rate"] = json!(3000);
        assert!(compare(&old, &fixed).iter().all(|r| r.what[1] == "memory"));
    }
}
