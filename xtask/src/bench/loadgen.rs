//! Finding and running the load generators: oha (fixed rate; h2load as a
//! fallback), wrk (HTTP/1.1 at max rate) and h2load (HTTP/2 at max rate).

use super::parse::{self, Sample};
use crate::procs;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The HTTP version a scenario speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 over cleartext, prior knowledge (h2c).
    Http2,
    /// Unary gRPC calls (h2c) to the test app's Echo service ([`super::grpc`]).
    Grpc,
    /// Messages on bidirectional gRPC streams to the same service ([`super::grpc_stream`]).
    GrpcStream,
}

impl Proto {
    /// The name used in reports.
    pub fn label(self) -> &'static str {
        match self {
            Proto::Http1 => "HTTP/1.1",
            Proto::Http2 => "HTTP/2",
            Proto::Grpc => "gRPC unary",
            Proto::GrpcStream => "gRPC streaming",
        }
    }

    /// The name used in JSON.
    pub fn key(self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::Http2 => "http2",
            Proto::Grpc => "grpc",
            Proto::GrpcStream => "grpc_stream",
        }
    }

    /// Whether it speaks HTTP/2 (h2c) on the wire.
    pub fn is_h2(self) -> bool {
        self != Proto::Http1
    }

    /// Whether its backend is the test app's gRPC Echo service.
    pub fn is_grpc(self) -> bool {
        matches!(self, Proto::Grpc | Proto::GrpcStream)
    }
}

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Open loop at this many requests per second in total.
    Fixed(u32),
    /// Closed loop: each connection sends its next request when the last one ends.
    Max,
}

/// One load-generator invocation.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Protocol to speak.
    pub proto: Proto,
    /// Fixed rate or max rate.
    pub mode: Mode,
    /// Concurrent connections.
    pub connections: u32,
    /// Measurement time.
    pub duration: Duration,
}

/// The load generators found on this machine.
#[derive(Debug, Clone)]
pub struct Tools {
    oha: Option<PathBuf>,
    wrk: PathBuf,
    h2load: PathBuf,
}

/// `name` on `PATH`, or in cargo's bin directory (where `cargo install` puts it).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|d| d.join("bin"));
    std::env::split_paths(&path).chain(cargo_bin).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `name`, or an error naming the Debian package that has it.
pub fn require(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    which(name).with_context(|| {
        format!("`{name}` not found: install the Debian package `{package}` (apt-get install {package})")
    })
}

impl Tools {
    /// Looks for every tool (installing oha when missing); fails naming the
    /// package of a missing one.
    pub fn find() -> anyhow::Result<Self> {
        let (wrk, h2load) = (require("wrk", "wrk")?, require("h2load", "nghttp2-client")?);
        let tools = Self { oha: super::peers::install::oha(), wrk, h2load };
        if tools.oha.is_none() {
            eprintln!(
                "note: no `oha` (`cargo install oha --locked`): fixed-rate runs use `h2load --rps`, \
                 whose clients send in bursts and whose latencies are not corrected for coordinated omission"
            );
        }
        Ok(tools)
    }

    /// Each tool's version line, for the machine description.
    pub fn versions(&self) -> Vec<(String, String)> {
        let oha = self.oha.as_ref().map(|o| ("oha", o, "--version"));
        [("wrk", &self.wrk, "-v"), ("h2load", &self.h2load, "--version")]
            .into_iter()
            .chain(oha)
            .map(|(name, bin, flag)| {
                let v = super::peers::install::version(bin, &[flag]).unwrap_or_else(|e| format!("unknown ({e:#})"));
                (name.to_string(), v)
            })
            .collect()
    }

    /// The tool that runs `load`.
    pub fn name(&self, load: &Load) -> &'static str {
        match (load.mode, load.proto, &self.oha) {
            (_, Proto::GrpcStream, _) => super::grpc_stream::TOOL,
            (Mode::Fixed(_), _, Some(_)) => "oha",
            (Mode::Max, Proto::Http1, _) => "wrk",
            _ => "h2load",
        }
    }

    /// Runs `load` against `target` (from inside network namespace
    /// `netns` when given: the pods topology's client pod) and parses the
    /// tool's report.
    pub fn run(&self, load: &Load, target: SocketAddr, scratch: &Path, netns: Option<&str>) -> anyhow::Result<Sample> {
        if load.proto == Proto::GrpcStream {
            bail!("streaming gRPC load comes from the test app (grpc_stream::run), not {}", self.name(load));
        }
        let url = match load.proto {
            Proto::Grpc => format!("http://{target}{}", super::grpc::UNARY_PATH),
            _ => format!("http://{target}/"),
        };
        let secs = load.duration.as_secs().max(1);
        let c = load.connections.max(1);
        let tool = self.name(load);
        let h2log = scratch.join("h2load-requests.tsv");
        let mut cmd = match (tool, load.mode) {
            ("oha", Mode::Fixed(rate)) => {
                let mut cmd = procs::command(self.oha.as_deref().unwrap_or(Path::new("oha")));
                cmd.args(["--no-tui", "--output-format", "json", "--latency-correction", "--worker-threads", "1"])
                    .args(["-z", &format!("{secs}s"), "-q", &rate.to_string(), "-c", &c.to_string()]);
                if load.proto.is_h2() {
                    cmd.arg("--http2");
                }
                cmd
            }
            ("wrk", _) => {
                let mut cmd = procs::command(&self.wrk);
                // wrk counts a response slower than its timeout (2 s by
                // default) as done and as a timeout error, and leaves it out
                // of the percentiles: with one longer than any run, a slow
                // answer is a slow answer in the latencies, and failed only
                // if it never came.
                let timeout = format!("{}s", secs + 30);
                cmd.args(["--latency", "-t1", "-c", &c.to_string(), "-d", &format!("{secs}s"), "--timeout", &timeout]);
                cmd
            }
            (_, mode) => {
                let mut cmd = procs::command(&self.h2load);
                cmd.args(["-t1", "-m1", "-c", &c.to_string(), "-D", &format!("{secs}s")]);
                if load.proto == Proto::Http1 {
                    cmd.arg("--h1");
                }
                if let Mode::Fixed(rate) = mode {
                    let _ = std::fs::remove_file(&h2log);
                    cmd.arg(format!("--rps={}", f64::from(rate) / f64::from(c)));
                    cmd.arg(format!("--log-file={}", h2log.display()));
                }
                cmd
            }
        };
        if load.proto == Proto::Grpc {
            cmd.args(super::grpc::load_args(tool, &super::grpc::write_body(scratch)?));
        }
        cmd.arg(&url);
        if let Some(ns) = netns {
            let mut wrapped = procs::command(Path::new("ip"));
            wrapped.args(["netns", "exec", ns]).arg(cmd.get_program()).args(cmd.get_args());
            cmd = wrapped;
        }
        let line = crate::cargo::display(&cmd);
        let out = procs::output_with_timeout(&mut cmd, load.duration + Duration::from_secs(30))
            .with_context(|| format!("`{line}`"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed = match tool {
            "oha" => parse::oha(&stdout),
            "wrk" => parse::wrk(&stdout),
            _ => parse::h2load(&stdout).and_then(|mut s| {
                if let Mode::Fixed(_) = load.mode {
                    let log = std::fs::read_to_string(&h2log).context("h2load wrote no --log-file")?;
                    ([s.p50_us, s.p90_us, s.p99_us], _) = parse::h2load_log(&log)?;
                }
                Ok(s)
            }),
        };
        match parsed {
            Ok(sample) => Ok(sample),
            Err(e) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                bail!("`{line}` ({}) gave no usable report: {e:#}\nstderr: {}", out.status, stderr.trim())
            }
        }
    }
}
