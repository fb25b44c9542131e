//! `cargo xtask soak`: a fixed request rate through a real mesh for a long
//! time, while the mesh is disturbed the way production disturbs it:
//!
//! - endpoint churn: a replica leaves or rejoins the registry file every
//!   `--churn-interval`, and each change must reach the client proxy;
//! - certificate rotation: the control plane issues certificates living
//!   twice `--rotation-interval` and proxies renew at half their life, so
//!   every proxy renews every interval (counted from their metrics);
//! - control-plane crashes: SIGKILL and a restart on the same addresses
//!   every `--restart-interval`.
//!
//! Asserted: no failed request, every churn step seen by the client proxy,
//! every proxy renewing, and RSS and open descriptors of the proxies and the
//! control plane flat (median of the first window after warm-up against the
//! last). Prints a table as it runs; writes `soak.svg` and `soak.csv` to
//! `target/soak/` (the processes' logs to `target/soak/run/`).

mod load;
mod mesh;
mod report;
mod stats;

use crate::bench::whole_seconds;
use crate::cargo;
use crate::mesh::Bins;
use crate::procs;
use anyhow::{Context, bail};
use load::Load;
use mesh::{Setup, SoakMesh};
use stats::{Sample, Usage};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Allowed change of RSS and descriptors between the windows, in percent.
const FLAT_PCT: f64 = 10.0;
/// How long a registry change may take to reach the client proxy.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(15);
/// How often the main loop wakes.
const TICK: Duration = Duration::from_millis(200);

/// Options of `cargo xtask soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Length of the run (e.g. 30m, 6m, 90s).
    #[arg(long, default_value = "30m", value_parser = whole_seconds)]
    duration: u64,
    /// Requests per second, in total.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Keep-alive connections the load is spread over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    connections: u32,
    /// Replicas of the service (each an app and its server proxy).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=8))]
    replicas: u64,
    /// How often a replica leaves or rejoins the registry.
    #[arg(long, default_value = "20s", value_parser = whole_seconds)]
    churn_interval: u64,
    /// How often every proxy renews its certificate (certificates live twice this).
    #[arg(long, default_value = "1m", value_parser = whole_seconds)]
    rotation_interval: u64,
    /// How often the control plane is killed and restarted.
    #[arg(long, default_value = "5m", value_parser = whole_seconds)]
    restart_interval: u64,
    /// Time before the first window of the flatness check.
    #[arg(long, default_value = "2m", value_parser = whole_seconds)]
    warmup: u64,
    /// How often resources and counters are sampled.
    #[arg(long, default_value = "5s", value_parser = whole_seconds)]
    sample_interval: u64,
    /// How often a table row is printed.
    #[arg(long, default_value = "1m", value_parser = whole_seconds)]
    report_interval: u64,
    /// Open descriptors a process may gain or lose beyond the percentage. A
    /// proxy holds fewer than 25, and its connection pools follow the load's
    /// momentary concurrency: one more proxied connection is two descriptors
    /// (downstream and upstream), several percent. A leak per request, churn
    /// step, renewal or restart exceeds this within the run.
    #[arg(long, default_value_t = 4)]
    fd_slack: u64,
    /// Use the release binaries already built instead of building them first.
    #[arg(long)]
    no_build: bool,
}

impl SoakArgs {
    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        for (name, v) in [
            ("--churn-interval", self.churn_interval),
            ("--rotation-interval", self.rotation_interval),
            ("--restart-interval", self.restart_interval),
            ("--sample-interval", self.sample_interval),
            ("--report-interval", self.report_interval),
        ] {
            if v == 0 {
                bail!("{name} must be at least 1s");
            }
        }
        if self.rotation_interval < 10 {
            bail!(
                "--rotation-interval must be at least 10s (certificates live twice that; renewal needs a round trip)"
            );
        }
        if self.warmup >= self.duration {
            bail!("--warmup ({}s) must be shorter than --duration ({}s)", self.warmup, self.duration);
        }
        let measured = self.duration - self.warmup;
        if measured / 3 < 3 * self.sample_interval {
            bail!(
                "the {measured}s after warm-up are too short to compare two windows of samples every {}s: \
                 lengthen --duration or shorten --warmup/--sample-interval",
                self.sample_interval
            );
        }
        Ok(())
    }
}

/// The registry's replicas at churn step `step` (1-based) of `n`: odd steps
/// remove one replica (each in turn), even steps bring it back.
pub fn churn_set(step: u64, n: usize) -> Vec<usize> {
    if step % 2 == 1 {
        let gone = ((step - 1) / 2) as usize % n;
        (0..n).filter(|&i| i != gone).collect()
    } else {
        (0..n).collect()
    }
}

/// Events of the run, for the verdicts.
#[derive(Debug, Default)]
struct Events {
    restarts: Vec<(f64, Duration)>,
    churn_steps: u64,
    propagation: Vec<Duration>,
    churn_failures: Vec<String>,
}

/// Runs the soak; fails, naming each broken expectation, unless all hold.
pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    args.check()?;
    if !args.no_build {
        // The same build as `cargo xtask demo` and `bench`.
        cargo::run_step(&mut cargo::cargo(&["build", "--release", "--bins"]))?;
    }
    let bins = Bins::release()?;
    let out = cargo::target_dir()?.join("soak");
    let run_dir = out.join("run");
    let owner = run_dir.join("xtask.pid");
    let running = std::fs::read_to_string(&owner).ok().and_then(|p| p.trim().parse::<u32>().ok());
    if let Some(pid) = running.filter(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
        bail!("another soak (pid {pid}) is running in {}: wait for it to end, or stop it", run_dir.display());
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    std::fs::write(&owner, std::process::id().to_string())
        .with_context(|| format!("cannot write {}", owner.display()))?;
    let rotation = SoakArgs::secs(args.rotation_interval);
    let setup = Setup { replicas: args.replicas as usize, cert_ttl: rotation * 2, renew_at: 0.5 };
    eprintln!("==> starting the mesh in {}", run_dir.display());
    let mut mesh = SoakMesh::start(&bins, setup, &run_dir).context("cannot start the soak's mesh")?;
    let names = mesh.names();
    eprintln!(
        "==> soak: {} at {} req/s over {} connections to {}; churn every {}s, renewal every {}s \
         (--cert-ttl {}s), control-plane restart every {}s",
        report::clock(args.duration as f64),
        args.rate,
        args.connections,
        mesh.entry,
        args.churn_interval,
        args.rotation_interval,
        setup.cert_ttl.as_secs(),
        args.restart_interval
    );
    let load = Load::start(mesh.entry, args.rate, args.connections)?;
    let result = soak(args, &mut mesh, &load);
    let stats = load.stats.clone();
    load.stop();
    let (samples, events) = match result {
        Ok(r) => r,
        Err(e) => {
            let logs = mesh.log_dir().map(|d| d.display().to_string()).unwrap_or_default();
            return Err(e.context(format!("the soak stopped early (logs in {logs})")));
        }
    };
    let proxies = mesh.proxy_admins().len();
    let t_max = args.duration as f64;
    let restarts: Vec<f64> = events.restarts.iter().map(|r| r.0).collect();
    let svg_path = out.join("soak.svg");
    let title = format!("cargo xtask soak: {} at {} req/s", report::clock(t_max), args.rate);
    std::fs::write(&svg_path, report::plot(&title, &names, &samples, &restarts, t_max, proxies))
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    let csv_path = out.join("soak.csv");
    std::fs::write(&csv_path, report::csv(&names, &samples))
        .with_context(|| format!("cannot write {}", csv_path.display()))?;

    let problems = verdicts(args, &names, &samples, &events, &stats);
    println!("\nplot: {}\nsamples: {}\nlogs: {}", svg_path.display(), csv_path.display(), run_dir.display());
    if problems.is_empty() {
        println!("soak: PASSED");
        Ok(())
    } else {
        bail!("soak FAILED:\n  - {}", problems.join("\n  - "))
    }
}

/// The run itself: disturbances, samples and table rows until the duration
/// has passed.
fn soak(args: &SoakArgs, mesh: &mut SoakMesh, load: &Load) -> anyhow::Result<(Vec<Sample>, Events)> {
    let names = mesh.names();
    let proxies = mesh.proxy_admins().len();
    let n = mesh.replica_count();
    let mut events = Events::default();
    let mut samples = vec![sample(mesh, load, 0, n, 0.0)?];
    let mut row_start = 0;
    let mut endpoints = n;
    let (mut next_churn, mut next_restart) = (args.churn_interval, args.restart_interval);
    let (mut next_sample, mut next_row) = (args.sample_interval, args.report_interval);
    let mut pending: Option<(usize, Instant)> = None;
    println!("{}", report::header(&names));
    let duration = args.duration as f64;
    loop {
        std::thread::sleep(TICK);
        let t = load.started.elapsed().as_secs_f64();
        mesh.check_alive()?;
        if t >= next_restart as f64 && t < duration {
            let down = mesh.restart_control()?;
            events.restarts.push((t, down));
            next_restart += args.restart_interval;
        }
        if t >= next_churn as f64 && t < duration {
            if let Some((want, since)) = pending.take() {
                events.churn_failures.push(format!(
                    "at {}: the client proxy did not see {want} endpoints within {:?} of the registry change",
                    report::clock(t),
                    since.elapsed()
                ));
            }
            events.churn_steps += 1;
            let live = churn_set(events.churn_steps, n);
            mesh.set_live(&live)?;
            endpoints = live.len();
            pending = Some((endpoints, Instant::now()));
            next_churn += args.churn_interval;
        }
        if let Some((want, since)) = pending {
            if mesh.endpoints_seen(want).is_none() {
                events.propagation.push(since.elapsed());
                pending = None;
            } else if since.elapsed() > PROPAGATION_LIMIT {
                let why = mesh.endpoints_seen(want).unwrap_or_default();
                events.churn_failures.push(format!("at {}: {why} after {PROPAGATION_LIMIT:?}", report::clock(t)));
                pending = None;
            }
        }
        let done = t >= duration;
        let row_due = t >= next_row as f64 || done;
        if t >= next_sample as f64 || row_due {
            samples.push(sample(mesh, load, events.restarts.len() as u64, endpoints, t)?);
            while next_sample as f64 <= t {
                next_sample += args.sample_interval;
            }
        }
        if row_due {
            let (prev, cur) = (&samples[row_start], &samples[samples.len() - 1]);
            println!("{}", report::row(prev, cur, &samples[row_start + 1..], proxies));
            row_start = samples.len() - 1;
            next_row += args.report_interval;
        }
        if done {
            return Ok((samples, events));
        }
    }
}

/// Reads the counters, each measured process's RSS and descriptors, and
/// the proxies' certificate counters.
fn sample(mesh: &SoakMesh, load: &Load, restarts: u64, endpoints: usize, t: f64) -> anyhow::Result<Sample> {
    let usage = mesh
        .pids()
        .into_iter()
        .map(|pid| Ok(Usage { rss_kib: procs::memory(pid)?.rss_kib, fds: procs::open_fds(pid)? }))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut cert_ok = Vec::new();
    let mut cert_errors = 0;
    for admin in mesh.proxy_admins() {
        // The soak's own reading, not the load: a busy machine may time out
        // one admin request, so try again before giving up.
        let m = crate::mesh::metrics(admin)
            .or_else(|_| crate::mesh::metrics(admin))
            .or_else(|_| crate::mesh::metrics(admin))?;
        cert_ok.push(crate::prom::metric_sum(&m, "identity_cert_refresh_total", &[("result", "ok")]) as u64);
        cert_errors += crate::prom::metric_sum(&m, "identity_cert_refresh_total", &[("result", "error")]) as u64;
    }
    let mut lat = load.stats.drain_latencies();
    Ok(Sample {
        t,
        sent: load.stats.sent.load(Ordering::Relaxed),
        failed: load.stats.failed.load(Ordering::Relaxed),
        p99_ms: stats::quantile(&mut lat, 0.99).map(|us| f64::from(us) / 1000.0),
        usage,
        cert_ok,
        cert_errors,
        restarts,
        endpoints,
    })
}

/// Prints the summary and returns every broken expectation.
fn verdicts(
    args: &SoakArgs,
    names: &[String],
    samples: &[Sample],
    events: &Events,
    load: &load::LoadStats,
) -> Vec<String> {
    let mut problems = Vec::new();
    let last = samples.last();
    let (sent, failed) = last.map_or((0, 0), |s| (s.sent, s.failed));
    println!("\n== summary");
    println!(
        "requests: {sent} sent, {} answered 200, {failed} failed (target rate {} req/s over {}s)",
        load.ok.load(Ordering::Relaxed),
        args.rate,
        args.duration
    );
    let per_replica: Vec<String> = load.replicas().iter().map(|(r, c)| format!("{r}: {c}")).collect();
    println!("answers per replica: {}", per_replica.join(", "));
    if failed > 0 {
        let first: Vec<String> = load.failures().iter().map(|(t, w)| format!("{}: {w}", report::clock(*t))).collect();
        problems.push(format!("{failed} of {sent} requests failed; the first:\n      {}", first.join("\n      ")));
    }
    let expected = u64::from(args.rate) * args.duration;
    if sent * 10 < expected * 9 {
        problems
            .push(format!("only {sent} of {expected} scheduled requests were sent: the load generator fell behind"));
    }
    let max_prop = events.propagation.iter().max().copied().unwrap_or_default();
    println!(
        "endpoint churn: {} registry changes, {} seen by the client proxy (slowest {max_prop:?})",
        events.churn_steps,
        events.propagation.len()
    );
    problems.extend(events.churn_failures.iter().cloned());
    let downs: Vec<String> = events.restarts.iter().map(|(t, d)| format!("{} ({d:.1?})", report::clock(*t))).collect();
    println!("control-plane restarts (SIGKILL; down until /ready): {} at {}", downs.len(), downs.join(", "));
    let want_restarts = (args.duration - 1) / args.restart_interval;
    if (events.restarts.len() as u64) < want_restarts {
        problems.push(format!("{} control-plane restarts, expected {want_restarts}", events.restarts.len()));
    }
    if let Some(s) = last {
        let min = stats::min_renewals(SoakArgs::secs(args.duration), SoakArgs::secs(args.rotation_interval));
        let per: Vec<u64> = s.cert_ok.iter().map(|ok| ok.saturating_sub(1)).collect();
        println!(
            "certificate renewals per proxy (client, servers): {per:?} (at least {min} expected); certificate requests failed (and retried): {}",
            s.cert_errors
        );
        for (i, r) in per.iter().enumerate() {
            if *r < min {
                problems.push(format!("{} renewed its certificate {r} times, expected at least {min}", names[i + 1]));
            }
        }
    }
    match stats::windows(SoakArgs::secs(args.duration), SoakArgs::secs(args.warmup)) {
        None => problems.push("no time after warm-up to check RSS and descriptors".into()),
        Some(w) => {
            println!(
                "resources: median of {}–{} against {}–{} (limit ±{FLAT_PCT} %; descriptors also ±{})",
                report::clock(w.0.0),
                report::clock(w.0.1),
                report::clock(w.1.0),
                report::clock(w.1.1),
                args.fd_slack
            );
            for (i, name) in names.iter().enumerate() {
                let series = |f: fn(&Usage) -> f64| -> Vec<(f64, f64)> {
                    samples.iter().filter_map(|s| Some((s.t, f(s.usage.get(i)?)))).collect()
                };
                let rss = stats::level(&series(|u| u.rss_kib as f64), w);
                let fds = stats::level(&series(|u| u.fds as f64), w);
                let (Some(rss), Some(fds)) = (rss, fds) else {
                    problems.push(format!("{name}: no samples in a window"));
                    continue;
                };
                println!(
                    "  {name:<9} RSS {:>7.1} → {:>7.1} MiB ({:+.1} %)   fds {:>4} → {:>4} ({:+.1} %)",
                    rss.first / 1024.0,
                    rss.last / 1024.0,
                    rss.change_pct(),
                    fds.first,
                    fds.last,
                    fds.change_pct()
                );
                if !rss.flat(FLAT_PCT, 0.0) {
                    problems.push(format!(
                        "{name}'s RSS went from {:.1} to {:.1} MiB ({:+.1} %, limit ±{FLAT_PCT} %)",
                        rss.first / 1024.0,
                        rss.last / 1024.0,
                        rss.change_pct()
                    ));
                }
                if !fds.flat(FLAT_PCT, args.fd_slack as f64) {
                    problems.push(format!(
                        "{name}'s open descriptors went from {} to {} ({:+.1} %, limit ±{FLAT_PCT} % or ±{})",
                        fds.first,
                        fds.last,
                        fds.change_pct(),
                        args.fd_slack
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_removes_each_replica_in_turn() {
        let sets: Vec<Vec<usize>> = (1..=6).map(|s| churn_set(s, 3)).collect();
        assert_eq!(sets, [vec![1, 2], vec![0, 1, 2], vec![0, 2], vec![0, 1, 2], vec![0, 1], vec![0, 1, 2]]);
        assert_eq!(churn_set(7, 3), vec![1, 2]);
    }
}
