//! `mesh-test-app`: the plain apps and clients of the host end-to-end suite,
//! as one binary that runs inside a network namespace like any workload;
//! also the OTLP span sink, the swarm of simulated proxies (`watch-swarm`)
//! and the floor relays (`relay`) `cargo xtask bench` runs as child processes.
//!
//! It knows nothing of the mesh: servers listen on plain addresses, clients
//! dial plain addresses (a service's virtual IP or a pod's IP), and iptables
//! rules installed by `mesh-proxy init` do the rest.
//!
//! Servers print `listening on ADDR` once bound, then run until killed.
//! Clients exit 0 on success; see each subcommand for its other exit codes.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use mesh_tests::pb::Msg;
use mesh_tests::pb::echo_client::EchoClient;
use mesh_tests::{apps, grpc, load, otlp, relay, stream_load, swarm};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Test apps and clients for the host end-to-end suite.
#[derive(Debug, Parser)]
#[command(name = "mesh-test-app")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// HTTP/1.1 and HTTP/2 (prior knowledge) on one port: `/` answers the
    /// name, `/echo` echoes the body; every response carries `x-replica`.
    HttpServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
    },
    /// The gRPC Echo service (unary and bidirectional streaming).
    GrpcServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
    },
    /// Sends `--messages` messages on one bidirectional stream and checks
    /// every echo. Exit 0: all matched; 1: a mismatch; 2: an RPC error.
    GrpcClient {
        /// e.g. http://10.96.0.20:50051
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 10)]
        messages: u64,
        /// Text of each message (the sequence number is appended).
        #[arg(long, default_value = "grpc-message")]
        text: String,
    },
    /// Streaming gRPC load (for `cargo xtask bench --protocol
    /// grpc-stream`): `--streams` bidirectional Echo streams, one connection
    /// each, at `--rate` messages/s in total (open loop, latency from each
    /// message's intended send time) or, without `--rate`, one message in
    /// flight per stream (closed loop). Prints one JSON report on stdout;
    /// exit 0 even when messages failed (the report counts them).
    GrpcStreamLoad {
        /// e.g. http://127.0.0.1:50051
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
        streams: u32,
        /// Messages per second over all streams (omit for max rate).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
        #[arg(long, default_value = "10s", value_parser = duration)]
        duration: Duration,
        /// Text of each message.
        #[arg(long, default_value = "bench")]
        text: String,
    },
    /// TCP echo server.
    TcpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Server-first TCP: writes `--banner` on accept, then echoes.
    Banner {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "220 mesh-test-app ready\r\n")]
        banner: String,
    },
    /// TCP client: optionally reads the banner first (without sending
    /// anything), then sends `--send` and expects it echoed.
    /// Exit 0: pass; 1: wrong bytes; 2: connection refused; 3: reset or
    /// closed early; 4: timed out; 5: other error.
    TcpClient {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        expect_banner: Option<String>,
        #[arg(long, default_value = "ping from mesh-test-app\n")]
        send: String,
        #[arg(long, default_value = "5s", value_parser = duration)]
        timeout: Duration,
    },
    /// Closed-loop HTTP load until `--duration` passes, `--requests` are
    /// done, or SIGTERM/SIGINT; prints the outcome (JSON with `--json`) on
    /// stdout and `progress ok=N failed=M` lines on stderr as it goes.
    HttpLoad {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "10s", value_parser = duration)]
        duration: Duration,
        #[arg(long)]
        requests: Option<u64>,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Each worker pauses this long after each request (0: back to back).
        #[arg(long, default_value = "0ms", value_parser = duration)]
        pause: Duration,
        /// HTTP/2 with prior knowledge instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
        #[arg(long)]
        json: bool,
    },
    /// Creates each file (truncating it) and writes a line to it, as a
    /// workload writing to its filesystem does (for the node's
    /// `readOnlyRootFilesystem` and `readOnly` mounts). Exit 0: all
    /// written; 30: a read-only filesystem refused one (EROFS); 13:
    /// permission denied; 1: another error. Stops at the first failure.
    WriteFile {
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// OTLP/gRPC trace receiver that counts spans and discards them (for
    /// `cargo xtask bench`). Prints `listening on ADDR` (gRPC) and
    /// `counts on ADDR`, where `GET /spans` answers the spans received so far.
    OtlpSink {
        /// The OTLP/gRPC listener.
        #[arg(long)]
        listen: SocketAddr,
        /// The HTTP listener for `GET /spans`.
        #[arg(long)]
        counts: SocketAddr,
    },
    /// A minimal relay (one thread): copies bytes between each accepted
    /// connection and one it opens to `--to`, without parsing them; with
    /// `--tls`, TLS 1.3 between two relays (the mesh's setup, SPIFFE IDs
    /// checked). A pair is `cargo xtask bench`'s floor reference.
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        /// The side of the TLS hop: `connect` (TLS out) or `accept` (TLS in).
        #[arg(long, value_enum, requires_all = ["cert_chain", "key", "trust_anchors", "peer_id"])]
        tls: Option<relay::Side>,
        /// Its certificate chain (PEM, leaf first).
        #[arg(long, requires = "tls")]
        cert_chain: Option<std::path::PathBuf>,
        /// Its private key (PEM).
        #[arg(long, requires = "tls")]
        key: Option<std::path::PathBuf>,
        /// Trust anchors (PEM) the other relay's chain must lead to.
        #[arg(long, requires = "tls")]
        trust_anchors: Option<std::path::PathBuf>,
        /// The SPIFFE ID the other relay must present.
        #[arg(long, requires = "tls")]
        peer_id: Option<String>,
    },
    /// Simulated proxies watching the control plane (for `cargo xtask
    /// bench --scenario control-plane`): each client its own connection
    /// (TLS with a certificate from `--token-file` when given) holding
    /// `--watches` Destination watches over the synthetic registry
    /// (`mesh_spec::synthetic`; every client watches service 0). Prints
    /// `status on ADDR`, where `GET /status` and `GET /seen?addr=IP:PORT`
    /// answer JSON. Raises its open-file limit to the hard limit.
    WatchSwarm {
        /// e.g. http://127.0.0.1:8086
        #[arg(long)]
        control_plane: String,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Destination watches per client (service 0 and others).
        #[arg(long, default_value_t = 1)]
        watches: usize,
        /// Services in the synthetic registry (to spread the other watches).
        #[arg(long)]
        services: usize,
        /// A join token (file) to get the clients' certificate with.
        #[arg(long, requires = "trust_anchors")]
        token_file: Option<std::path::PathBuf>,
        /// The mesh's trust anchors (PEM), to verify the control plane.
        #[arg(long, requires = "token_file")]
        trust_anchors: Option<std::path::PathBuf>,
        /// Clients connecting at once.
        #[arg(long, default_value_t = 32)]
        connect_concurrency: usize,
        /// The HTTP listener for `/status` and `/seen`.
        #[arg(long)]
        status: SocketAddr,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    mesh_core::duration::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The sink and the relay run on one thread: they share the CPUs with
    // what the bench measures (the relay is measured as a proxy is, with one thread).
    let mut builder = match cli.command {
        Cmd::OtlpSink { .. } | Cmd::Relay { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(5);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(5)
        }
    }
}

/// `write-file`'s exit code (see its doc).
fn write_files(paths: &[std::path::PathBuf]) -> u8 {
    for path in paths {
        if let Err(e) = std::fs::write(path, b"written by mesh-test-app\n") {
            eprintln!("write-file {}: {e}", path.display());
            return match e.kind() {
                ErrorKind::ReadOnlyFilesystem => 30,
                ErrorKind::PermissionDenied => 13,
                _ => 1,
            };
        }
        println!("wrote {}", path.display());
    }
    0
}

fn listening(addr: SocketAddr) {
    println!("listening on {addr}");
}

async fn run(cmd: Cmd) -> anyhow::Result<u8> {
    match cmd {
        Cmd::HttpServer { listen, name } => {
            let app = apps::http_at(listen, &name).await;
            listening(app.addr);
            std::future::pending::<()>().await;
            Ok(0)
        }
        Cmd::GrpcServer { listen, name } => {
            let app = grpc::start_at(listen, &name).await;
            listening(app.addr);
            std::future::pending::<()>().await;
            Ok(0)
        }
        Cmd::TcpEcho { listen } => {
            let app = apps::tcp_echo_at(listen).await;
            listening(app.addr);
            std::future::pending::<()>().await;
            Ok(0)
        }
        Cmd::Banner { listen, banner } => {
            let app = apps::banner_at(listen, &banner).await;
            listening(app.addr);
            std::future::pending::<()>().await;
            Ok(0)
        }
        Cmd::GrpcClient { target, messages, text } => grpc_client(target, messages, text).await,
        Cmd::GrpcStreamLoad { target, streams, rate, duration, text } => {
            let config = stream_load::Config { target, streams, rate, duration, text };
            let outcome = stream_load::run(&config).await;
            println!("{}", outcome.json(&config));
            Ok(0)
        }
        Cmd::TcpClient { target, expect_banner, send, timeout } => {
            let started = Instant::now();
            let code = match tokio::time::timeout(timeout, tcp_client(target, expect_banner, send)).await {
                Ok(Ok(())) => 0,
                Ok(Err(TcpFailure::Mismatch(m))) => {
                    eprintln!("mismatch: {m}");
                    1
                }
                Ok(Err(TcpFailure::Io(e))) => {
                    eprintln!("error: {e}");
                    match e.kind() {
                        ErrorKind::ConnectionRefused => 2,
                        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => 3,
                        _ => 5,
                    }
                }
                Err(_) => {
                    eprintln!("timed out after {timeout:?}");
                    4
                }
            };
            eprintln!("tcp-client finished in {:?} with exit code {code}", started.elapsed());
            Ok(code)
        }
        Cmd::HttpLoad { url, duration, requests, concurrency, pause, http2, json } => {
            http_load(url, duration, requests, concurrency, pause, http2, json).await
        }
        Cmd::WriteFile { paths } => Ok(write_files(&paths)),
        Cmd::Relay { listen, to, tls, cert_chain, key, trust_anchors, peer_id } => {
            let hop = match (tls, cert_chain, key, trust_anchors, peer_id) {
                (Some(side), Some(chain), Some(key), Some(anchors), Some(peer)) => {
                    let read = |p: &std::path::Path| {
                        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
                    };
                    let (chain, key, anchors) = (read(&chain)?, read(&key)?, read(&anchors)?);
                    relay::Hop::tls(side, relay::Pems { chain: &chain, key: &key, anchors: &anchors }, &peer)?
                }
                _ => relay::Hop::Plain,
            };
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            listening(listener.local_addr()?);
            relay::serve(listener, to, hop).await?;
            Ok(0)
        }
        Cmd::OtlpSink { listen, counts } => {
            let sink = otlp::OtlpSink::start(listen, counts).await.context("cannot start the OTLP sink")?;
            listening(sink.addr);
            println!("counts on {}", sink.counts_addr);
            std::future::pending::<()>().await;
            Ok(0)
        }
        Cmd::WatchSwarm {
            control_plane,
            clients,
            watches,
            services,
            token_file,
            trust_anchors,
            connect_concurrency,
            status,
        } => {
            let fds = mesh_process::raise_open_files().context("cannot raise the open-file limit")?;
            eprintln!("open-file limit {} (was {})", fds.after, fds.before);
            let tls = match (token_file, trust_anchors) {
                (Some(token), Some(anchors)) => {
                    let token = std::fs::read_to_string(&token)
                        .with_context(|| format!("cannot read the token file {}", token.display()))?;
                    let anchors = std::fs::read_to_string(&anchors)
                        .with_context(|| format!("cannot read the trust anchors {}", anchors.display()))?;
                    Some(swarm::certify(&control_plane, &token, &anchors).await?)
                }
                _ => None,
            };
            let targets = (0..clients).map(|c| swarm::targets_for(c, watches, services)).collect();
            let config = swarm::SwarmConfig { control_plane, tls, targets, connect_concurrency };
            let swarm = std::sync::Arc::new(swarm::Swarm::start(config).context("bad control-plane address")?);
            let listener =
                tokio::net::TcpListener::bind(status).await.with_context(|| format!("cannot bind {status}"))?;
            println!("status on {}", listener.local_addr()?);
            swarm::serve_status(listener, swarm).await;
            Ok(0)
        }
    }
}

async fn grpc_client(target: String, messages: u64, text: String) -> anyhow::Result<u8> {
    let channel = tonic::transport::Endpoint::from_shared(target.clone())
        .context("bad target")?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    let mut client = EchoClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(4);
    let mut responses = match client.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            eprintln!("bidi failed: {status}");
            return Ok(2);
        }
    };
    let mut replicas = std::collections::BTreeSet::new();
    // Strictly alternating send and receive: each echo must arrive while the
    // stream is still open in both directions.
    for seq in 0..messages {
        let msg = Msg { text: format!("{text}-{seq}"), seq, replica: String::new() };
        if tx.send(msg).await.is_err() {
            eprintln!("the stream closed before message {seq} was sent");
            return Ok(2);
        }
        match tokio::time::timeout(Duration::from_secs(10), responses.next()).await {
            Ok(Some(Ok(m))) if m.text == format!("{text}-{seq}") && m.seq == seq + 1 => {
                replicas.insert(m.replica);
            }
            Ok(Some(Ok(m))) => {
                eprintln!("message {seq}: unexpected echo {m:?}");
                return Ok(1);
            }
            Ok(Some(Err(status))) => {
                eprintln!("message {seq}: {status}");
                return Ok(2);
            }
            Ok(None) => {
                eprintln!("message {seq}: the response stream ended early");
                return Ok(2);
            }
            Err(_) => {
                eprintln!("message {seq}: no echo within 10s");
                return Ok(2);
            }
        }
    }
    drop(tx);
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_secs(5), responses.next()).await {
        eprintln!("unexpected message after the client closed: {extra:?}");
        return Ok(1);
    }
    println!("ok: {messages} messages echoed by {}", replicas.into_iter().collect::<Vec<_>>().join(","));
    Ok(0)
}

enum TcpFailure {
    Mismatch(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for TcpFailure {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

async fn read_exact_or_mismatch(s: &mut TcpStream, want: &[u8], what: &str) -> Result<(), TcpFailure> {
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).await?;
    if got != want {
        return Err(TcpFailure::Mismatch(format!(
            "{what}: expected {:?}, got {:?}",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(&got)
        )));
    }
    Ok(())
}

async fn tcp_client(target: SocketAddr, banner: Option<String>, send: String) -> Result<(), TcpFailure> {
    let mut s = TcpStream::connect(target).await?;
    if let Some(b) = banner {
        // Server-first: nothing is sent until the banner has arrived.
        read_exact_or_mismatch(&mut s, b.as_bytes(), "banner").await?;
    }
    s.write_all(send.as_bytes()).await?;
    read_exact_or_mismatch(&mut s, send.as_bytes(), "echo").await?;
    s.shutdown().await?;
    // The server closes its side once we closed ours.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    if !rest.is_empty() {
        return Err(TcpFailure::Mismatch(format!("unexpected trailing bytes {:?}", String::from_utf8_lossy(&rest))));
    }
    println!("ok");
    Ok(())
}

async fn http_load(
    url: String,
    duration: Duration,
    requests: Option<u64>,
    concurrency: usize,
    pause: Duration,
    http2: bool,
    json: bool,
) -> anyhow::Result<u8> {
    if concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let load = load::Load::start_paced(&url, concurrency, http2, pause);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let o = load.snapshot();
                eprintln!("progress ok={} failed={}", o.ok, o.failed);
                if requests.is_some_and(|n| o.ok + o.failed >= n) {
                    break;
                }
            }
        }
    }
    let o = load.stop().await;
    let elapsed = started.elapsed();
    eprintln!("progress ok={} failed={}", o.ok, o.failed);
    if json {
        let out = serde_json::json!({
            "ok": o.ok,
            "failed": o.failed,
            "by_replica": o.by_replica,
            "errors": o.errors,
            "elapsed_ms": elapsed.as_millis() as u64,
        });
        println!("{out}");
    } else {
        let mut by: Vec<_> = o.by_replica.iter().collect();
        by.sort();
        println!("ok={} failed={} elapsed={elapsed:?} by_replica={by:?} errors={:?}", o.ok, o.failed, o.errors);
    }
    Ok(0)
}
