//! The results folder of a run, `target/bench-results/<UTC time>/`: the
//! report as markdown (machine, tables, the issue's targets), the JSON
//! document with the machine in it, the machine alone, and the plots.

use super::report::Report;
use anyhow::Context;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// What the numbers were measured on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub model: String,
    /// `MemTotal` from `/proc/meminfo`, in KiB.
    pub mem_kib: u64,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// `/proc/loadavg` at the start of the run.
    pub load_avg: String,
    /// (tool, its version line) for each tool used.
    pub versions: Vec<(String, String)>,
}

/// The first `model name` of a `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// `MemTotal` (KiB) of a `/proc/meminfo`.
fn mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

impl Machine {
    /// This machine, with `versions` of the tools.
    pub fn describe(load_avg: String, versions: Vec<(String, String)>) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".into()),
            mem_kib: mem_total(&read("/proc/meminfo")).unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_avg,
            versions,
        }
    }

    /// As JSON.
    pub fn json(&self) -> Value {
        let versions: serde_json::Map<String, Value> =
            self.versions.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        json!({
            "cpus": self.cpus,
            "cpu_model": self.model,
            "mem_total_kib": self.mem_kib,
            "kernel": self.kernel,
            "load_avg_at_start": self.load_avg,
            "versions": versions,
        })
    }

    /// As a markdown list.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "- CPU: {} × {}\n- memory: {:.1} GiB\n- kernel: {}\n- load average at the start: {}\n",
            self.cpus,
            self.model,
            self.mem_kib as f64 / (1024.0 * 1024.0),
            self.kernel,
            self.load_avg
        );
        for (tool, v) in &self.versions {
            out += &format!("- {tool}: {v}\n");
        }
        out
    }
}

/// `YYYYMMDDTHHMMSSZ` for `secs` since the Unix epoch (UTC).
pub fn timestamp(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The markdown report: the command, the machine, skipped peers, the
/// issue's targets, then every table as text.
pub fn markdown(report: &Report, machine: &Machine, command: &str, skipped: &[String]) -> String {
    let mut out = format!("# cargo xtask bench\n\n`{command}`\n\n## Machine\n\n{}", machine.markdown());
    if !skipped.is_empty() {
        out += "\n## Skipped\n\n";
        for s in skipped {
            out += &format!("- {s}\n");
        }
    }
    let targets = super::targets::markdown(&report.sections);
    if !targets.is_empty() {
        out += "\n## Against Envoy's pair\n";
        out += &targets;
    }
    let floor = super::targets::floor_markdown(&report.sections);
    if !floor.is_empty() {
        out += "\n## Against the floor (relay pairs without HTTP parsing)\n";
        out += &floor;
    }
    out += &format!("\n## Tables\n\n```text\n{}```\n", report.table());
    out
}

/// Writes `report.md`, `results.json`, `machine.json` and the plots
/// (`latency.svg`, `cpu.svg`, [`super::plot`]) into a new
/// `<base>/<timestamp>/` and returns that folder.
pub fn write(
    base: &Path,
    report: &Report,
    machine: &Machine,
    command: &str,
    skipped: &[String],
) -> anyhow::Result<PathBuf> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let dir = base.join(timestamp(secs));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut doc = report.json();
    doc["machine"] = machine.json();
    doc["command"] = json!(command);
    doc["skipped"] = json!(skipped);
    let files = [
        ("report.md", markdown(report, machine, command, skipped)),
        ("results.json", format!("{doc:#}\n")),
        ("machine.json", format!("{:#}\n", machine.json())),
        ("latency.svg", super::plot::latency(report)),
        ("cpu.svg", super::plot::cpu(report)),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches an off-by-one month or day (January–February and March–December
    /// take different branches), or a local-time stamp.
    #[test]
    fn utc_timestamps() {
        assert_eq!(timestamp(0), "19700101T000000Z");
        assert_eq!(timestamp(951_782_400), "20000229T000000Z");
        assert_eq!(timestamp(1_709_251_199), "20240229T235959Z");
        assert_eq!(timestamp(1_735_689_600 + 3661), "20250101T010101Z");
        assert_eq!(timestamp(1_795_977_489), "20261129T183809Z");
        assert_eq!(timestamp(946_684_799), "19991231T235959Z");
        assert_eq!(timestamp(1_625_400_000), "20210704T120000Z");
    }

    /// Catches reading the wrong field of /proc/cpuinfo or /proc/meminfo.
    #[test]
    fn machine_from_proc() {
        let cpuinfo =
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
        assert_eq!(mem_total("MemFree: 1 kB\nMemTotal:       24576000 kB\n"), Some(24_576_000));
        let m = Machine {
            cpus: 2,
            model: "X".into(),
            mem_kib: 1024 * 1024,
            versions: vec![("envoy".into(), "1.40".into())],
            ..Machine::default()
        };
        let md = m.markdown();
        assert!(md.contains("- CPU: 2 × X\n") && md.contains("1.0 GiB") && md.contains("- envoy: 1.40\n"), "{md}");
        assert_eq!(m.json()["versions"]["envoy"], json!("1.40"));
    }
}
