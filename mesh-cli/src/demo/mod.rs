//! `meshctl demo`: a whole mesh on this machine, in universal mode, on
//! loopback, without root or Kubernetes.
//!
//! The control plane reads a generated registry; every replica of `web`,
//! `books` and `authors` is its own app process with its own `mesh-proxy`;
//! meshctl drives traffic to `web` through a sidecar of its own and shows
//! per-service golden metrics from the sidecars' `/metrics` until the
//! duration ends or a signal arrives, then stops every process it started.
//!
//! With identity (the default) the run directory holds a CA of its own
//! (`identity/`) and a join token per proxy (`tokens/`); the control plane
//! signs every proxy's certificate and all meshed traffic is mTLS, with
//! strict inbound. `--no-identity` runs the same mesh in plaintext.
//!
//! Modules: [`plan`] (topology, registry, flags), [`mtls`] (the demo's CA
//! and join tokens), [`ports`] (free ports),
//! [`start`] (start-up and readiness; the children are supervised by
//! `mesh_process`),
//! [`apps`] (the demo apps), [`load`] (traffic), [`monitor`] (probes and
//! scraping), [`table`] (rendering), [`http`] (a small keep-alive client).

pub mod apps;
mod http;
mod load;
mod monitor;
mod mtls;
mod plan;
mod ports;
mod start;
mod table;

use crate::Output;
use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use load::{Load, LoadTotals};
use mesh_process::Supervisor;
use monitor::Scraper;
use mtls::DemoIdentity;
use plan::{Binaries, Plan};
use serde_json::json;
use start::{Interrupted, Signals};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use table::{JsonRow, Row, Screen};

/// How long children get to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Flags of `meshctl demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Replicas of each service (web, books, authors).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub replicas: u16,
    /// Requests per second sent to web (open loop: a fixed schedule).
    #[arg(long, default_value_t = 50.0, value_parser = parse_rps)]
    pub rps: f64,
    /// Stop after this long, e.g. 30s or 5m; without it, run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How often the table refreshes (each row covers that period).
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Share of authors requests that fail with a 500: 1.5% or 0.015.
    #[arg(long, default_value = "1.5%", value_parser = parse_share)]
    pub failure_rate: f64,
    /// Keep the run directory (logs, registry, CA and join tokens) after a clean exit.
    #[arg(long)]
    pub keep_logs: bool,
    /// How long start-up may take before the demo gives up.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub startup_timeout: Duration,
    /// Run the mesh in plaintext: no CA, no certificates, no mTLS.
    #[arg(long)]
    pub no_identity: bool,
    /// Lifetime of the proxies' certificates; they renew at 70% of it
    /// (try 1m to watch renewals in the proxies' logs and metrics).
    #[arg(long, default_value = "24h", value_parser = parse_cert_ttl, conflicts_with = "no_identity")]
    pub cert_ttl: Duration,
    /// Format of the final summary (json: live tables go to stderr).
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

impl DemoArgs {
    /// The identity settings, for the JSON summary.
    fn identity_json(&self) -> serde_json::Value {
        if self.no_identity {
            return serde_json::Value::Null;
        }
        json!({ "trust_domain": mtls::TRUST_DOMAIN, "cert_ttl_seconds": self.cert_ttl.as_secs_f64() })
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_core::duration::parse(s).map_err(|e| e.to_string())
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err("the interval must be at least 100ms".to_string());
    }
    Ok(d)
}

fn parse_cert_ttl(s: &str) -> Result<Duration, String> {
    let d = crate::identity::parse_long_duration(s)?;
    if d < Duration::from_secs(10) {
        return Err("the certificate lifetime must be at least 10s".to_string());
    }
    Ok(d)
}

fn parse_rps(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.0..=10_000.0).contains(&r) => Ok(r),
        _ => Err(format!("invalid rate {s:?}: give requests per second between 0 and 10000")),
    }
}

/// A share written as a percentage (`1.5%`) or a fraction (`0.015`).
fn parse_share(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let share = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    };
    match share {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("invalid share {s:?}: write a percentage like 1.5% or a fraction like 0.015 (0 to 1)")),
    }
}

/// Runs the demo; returns once every child has been stopped.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let bins = Binaries::locate()?;
    // One thread: children die with the thread that forked them (PDEATHSIG),
    // and this one lives as long as meshctl.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(demo(args, bins))
}

/// How a run that was not cut short by a failure ended.
#[derive(Debug)]
struct Finished {
    stopped_by: String,
    rows: Vec<Row>,
    elapsed: Duration,
    load: LoadTotals,
}

async fn demo(args: DemoArgs, bins: Binaries) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let dir = make_run_dir()?;
    let mut screen = Screen::new(args.output == Output::Json);
    let mut sup = Supervisor::default();
    let result = drive(&args, &bins, &dir, &mut sup, &mut signals, &mut screen).await;

    let running = sup.running();
    if running > 0 {
        let noun = if running == 1 { "process" } else { "processes" };
        screen.print(&format!("\nstopping {running} {noun}…\n"));
    }
    let killed = sup.shutdown(STOP_GRACE).await;
    if !killed.is_empty() {
        eprintln!("warning: killed after {STOP_GRACE:?} without exiting on SIGTERM: {}", killed.join(", "));
    }
    let leftover = sup.running();
    match result {
        Ok(finished) => {
            let keep = args.keep_logs || leftover > 0;
            report(&args, &finished, &dir, keep, &mut screen)?;
            if leftover > 0 {
                bail!("{leftover} processes could not be stopped; see `pgrep -af {}`", dir.display());
            }
            if !keep {
                std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
            }
            Ok(())
        }
        Err(e) => Err(anyhow!("{e:#}\nthe logs of every process are kept in {}", dir.join("logs").display())),
    }
}

/// Creates a fresh, uniquely named directory for this run.
fn make_run_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let suffix: String = std::iter::repeat_with(|| fastrand::alphanumeric().to_ascii_lowercase()).take(8).collect();
        let dir = base.join(format!("meshctl-demo-{suffix}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create a run directory in {}", base.display())),
        }
    }
    bail!("cannot create a unique run directory in {}", base.display())
}

async fn drive(
    args: &DemoArgs,
    bins: &Binaries,
    dir: &Path,
    sup: &mut Supervisor,
    signals: &mut Signals,
    screen: &mut Screen,
) -> anyhow::Result<Finished> {
    let bins = bins.link_into(&dir.join("bin"))?;
    let replicas = usize::from(args.replicas);
    let mut plan = Plan::new(dir.to_path_buf(), bins, replicas, args.failure_rate)?;
    std::fs::create_dir_all(plan.log_dir()).with_context(|| format!("cannot create {}", plan.log_dir().display()))?;
    plan.write_registry()?;
    if !args.no_identity {
        // Each proxy's join token is minted as it is started (start.rs).
        plan.identity = Some(DemoIdentity::create(dir, args.cert_ttl)?);
    }
    screen.print(&format!(
        "meshctl demo: web, books and authors × {replicas} replicas, each with its own proxy, on loopback\n\
         logs: {} (one file per process); registry: {}\n{}",
        plan.log_dir().display(),
        plan.registry_path().display(),
        identity_line(&plan),
    ));

    let began = Instant::now();
    match start::start(&mut plan, sup, signals, args.startup_timeout).await {
        Ok(()) => {}
        Err(Interrupted::Signal(sig)) => {
            let (rows, elapsed) = (Vec::new(), Duration::ZERO);
            return Ok(Finished { stopped_by: sig.to_string(), rows, elapsed, load: LoadTotals::default() });
        }
        Err(Interrupted::Failed(e)) => return Err(e),
    }
    screen.print(&addresses(&plan));
    let until = args.duration.map_or_else(|| "Ctrl-C stops".to_string(), |d| format!("for {d:?}; Ctrl-C stops sooner"));
    screen.print(&format!(
        "{} processes ready in {:.1}s; sending {} req/s of GET / to web through the traffic proxy, {until}\n\n",
        sup.running(),
        began.elapsed().as_secs_f64(),
        args.rps,
    ));

    let mut scraper = Scraper::new(&plan.replicas, replicas);
    scraper.scrape().await;
    let load = Load::start(plan.traffic_listen, args.rps);
    let traffic_began = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    let stopped_by = loop {
        tokio::select! {
            _ = ticks.tick() => {
                let rows = scraper.scrape().await;
                let title = format!(
                    "[{:>4.0}s] last {:.1}s, inbound traffic per service (client: {} sent, {} failed)",
                    traffic_began.elapsed().as_secs_f64(),
                    args.interval.as_secs_f64(),
                    load.totals().sent,
                    load.totals().failed,
                );
                screen.show(&table::render(&title, &rows));
            }
            ex = sup.next_exit() => {
                load.stop(Duration::ZERO).await;
                return Err(start::crash_message(&ex));
            }
            sig = signals.recv() => break sig.to_string(),
            _ = &mut end => break "duration".to_string(),
        }
    };
    let totals = load.stop(Duration::from_secs(2)).await;
    scraper.scrape().await;
    let (rows, elapsed) = scraper.summary();
    Ok(Finished { stopped_by, rows, elapsed, load: totals })
}

/// One line on identity, under the banner.
fn identity_line(plan: &Plan) -> String {
    match &plan.identity {
        Some(id) => format!(
            "identity: CA for trust domain {} in {}; each proxy holds a certificate for \
             {}, valid {} and renewed at 70% of that; inbound is mTLS only\n",
            mtls::TRUST_DOMAIN,
            id.dir().display(),
            DemoIdentity::spiffe_id("<service>"),
            lifetime(id.cert_ttl),
        ),
        None => "identity: off (--no-identity): proxies talk plaintext\n".to_string(),
    }
}

/// `24h`, `90m`, `45s`.
fn lifetime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s >= 60 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{:.1}s", d.as_secs_f64()).replace(".0s", "s")
    }
}

/// Where everything listens, for curl.
fn addresses(plan: &Plan) -> String {
    let tls = if plan.identity.is_some() { " (TLS)" } else { "" };
    let mut s = format!(
        "control plane: grpc {}{tls}, admin http://{} (/metrics /ready)\n",
        plan.control_grpc, plan.control_admin
    );
    let _ =
        writeln!(s, "{:<12} {:<17} {:<17} proxy admin (/metrics /config /ready)", "WORKLOAD", "APP", "PROXY INBOUND");
    for r in &plan.replicas {
        let _ =
            writeln!(s, "{:<12} {:<17} {:<17} http://{}", r.name, r.app.to_string(), r.inbound.to_string(), r.admin);
    }
    let _ = writeln!(s, "{:<12} {:<17} {:<17} http://{}", "traffic", "-", "-", plan.traffic_admin);
    if let Some(web) = plan.replicas.first() {
        let _ = writeln!(s, "try: curl -s http://{}/metrics | grep response_total", web.admin);
        let _ = writeln!(s, "     meshctl stat --control-plane-admin http://{} --by service", plan.control_admin);
        if let Some(id) = &plan.identity {
            let _ = writeln!(s, "     curl -s http://{}/metrics | grep ^identity_", web.admin);
            let _ = writeln!(s, "     meshctl identity status --dir {}", id.dir().display());
        }
    }
    s
}

fn report(args: &DemoArgs, f: &Finished, dir: &Path, kept: bool, screen: &mut Screen) -> anyhow::Result<()> {
    let logs = if kept {
        format!("logs kept in {}", dir.join("logs").display())
    } else {
        "logs removed (--keep-logs keeps them)".to_string()
    };
    match args.output {
        Output::Human => {
            if f.rows.is_empty() {
                screen.print(&format!("stopped by {} before traffic started; {logs}\n", f.stopped_by));
                return Ok(());
            }
            let title = format!(
                "\nsummary: {:.1}s of traffic, stopped by {}; traffic generator sent {} requests: {} ok, {} failed, {} skipped",
                f.elapsed.as_secs_f64(),
                f.stopped_by,
                f.load.sent,
                f.load.ok,
                f.load.failed,
                f.load.skipped,
            );
            screen.print(&table::render(&title, &f.rows));
            screen.print(&format!("{logs}\n"));
        }
        Output::Json => {
            let services: Vec<JsonRow> = f.rows.iter().map(JsonRow::from).collect();
            let doc = json!({
                "stopped_by": f.stopped_by,
                "duration_seconds": (f.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                "services": services,
                "traffic": f.load,
                "identity": args.identity_json(),
                "logs": kept.then(|| dir.join("logs")),
            });
            let text = serde_json::to_string_pretty(&doc).map_err(|e| anyhow!("cannot encode the summary: {e}"))?;
            println!("{text}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares() {
        assert_eq!(parse_share("1.5%"), Ok(0.015));
        assert_eq!(parse_share("0.02"), Ok(0.02));
        assert_eq!(parse_share("0"), Ok(0.0));
        assert!(parse_share("150%").is_err());
        assert!(parse_share("-1").is_err());
        assert!(parse_share("lots").is_err());
    }

    #[test]
    fn rates_and_intervals() {
        assert_eq!(parse_rps("40"), Ok(40.0));
        assert!(parse_rps("-1").is_err());
        assert!(parse_rps("NaN").is_err());
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("10ms").is_err());
        assert_eq!(parse_cert_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_cert_ttl("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert!(parse_cert_ttl("5s").is_err());
        assert_eq!(lifetime(Duration::from_secs(86_400)), "24h");
        assert_eq!(lifetime(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(lifetime(Duration::from_millis(12_500)), "12.5s");
        assert_eq!(lifetime(Duration::from_secs(45)), "45s");
    }
}
