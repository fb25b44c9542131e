//! Measurements of the Kubernetes registry at scale, on demand (not a CI
//! test: numbers, not assertions, go in the closing note):
//!
//! ```sh
//! cargo build -p mesh-control && \
//!   cargo test -p mesh-tests --test kube_scale -- --ignored --nocapture
//! ```
//!
//! (`MESH_CONTROL_BIN=target/release/mesh-control` measures a release build.)
//!
//! 1,000 Services with 10 endpoints each (10,000 endpoints, one
//! EndpointSlice per Service) on the real API server; the real
//! `mesh-control --registry kubernetes` binary is started against them and
//! measured: time to serve (the full initial list, `/ready`), resident
//! memory once synced, then the latency from an EndpointSlice change to the
//! update on a watching proxy's Destination stream (gRPC), 20 times.

use futures_util::{StreamExt, TryStreamExt};
use mesh_kube::api::k8s_openapi::api::core::v1::Service;
use mesh_kube::api::k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_kube::api::{Api, PostParams};
use mesh_proto::destination::{GetDestination, destination_client::DestinationClient, update};
use mesh_tests::{bins, kube_harness};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 10;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn slice(i: usize, extra: usize) -> EndpointSlice {
    let endpoints: Vec<_> = (0..ENDPOINTS + extra)
        .map(|e| json!({"addresses": [format!("10.{}.{}.{}", 1 + i / 250, i % 250, e + 1)], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-1"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .expect("a slice")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether the admin port answers `/ready` with 200 (connection errors: not yet).
async fn ready_now(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run on demand with --ignored --nocapture"]
async fn registry_at_1000_services_and_10000_endpoints() {
    let Some(api) = tokio::task::spawn_blocking(kube_harness::start_or_skip).await.expect("join") else { return };
    let client = mesh_kube::client::connect(Some(&api.kubeconfig), None).await.expect("a client");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

    let started = Instant::now();
    futures_util::stream::iter(0..SERVICES)
        .map(|i| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let svc: Service = serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}")},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
                .expect("svc");
                services.create(&PostParams::default(), &svc).await?;
                slices.create(&PostParams::default(), &slice(i, 0)).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .expect("objects created");
    eprintln!("created {SERVICES} Services and {} endpoints in {:?}", SERVICES * ENDPOINTS, started.elapsed());

    let (grpc, admin) = (free_port(), free_port());
    let started = Instant::now();
    let binary = std::env::var_os("MESH_CONTROL_BIN").map_or_else(|| bins::path("mesh-control"), Into::into);
    let mut control = Command::new(binary)
        .args(["--registry", "kubernetes", "--kubeconfig"])
        .arg(&api.kubeconfig)
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}"), "--admin-addr", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mesh-control starts");
    let ready = loop {
        if ready_now(admin).await {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(120), "mesh-control never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rss = rss_kib(control.id());

    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc}"))
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let mut destinations = DestinationClient::new(channel);
    let mut samples = Vec::new();
    for round in 0..20 {
        let i = round * 37 % SERVICES;
        let request = GetDestination { target: format!("svc-{i}.default:80"), ..Default::default() };
        let mut stream = destinations.get(request).await.expect("watch").into_inner();
        let first = stream.message().await.expect("an answer").expect("a snapshot");
        assert!(matches!(first.kind, Some(update::Kind::Snapshot(ref s)) if s.endpoints.len() == ENDPOINTS));
        let mut current = slices.get(&format!("svc-{i}-1")).await.expect("slice");
        current.endpoints = slice(i, 1).endpoints;
        let changed = Instant::now();
        slices.replace(&format!("svc-{i}-1"), &PostParams::default(), &current).await.expect("slice updated");
        let update = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
        assert!(matches!(update, Ok(Ok(Some(_)))), "no update within 10 s");
        samples.push(changed.elapsed());
    }
    samples.sort();
    let rss_after = rss_kib(control.id());
    let _ = control.kill();
    let _ = control.wait();
    eprintln!(
        "mesh-control: served after {ready:?} (initial list of {SERVICES} Services / {} endpoints), RSS {} MiB when synced, \
         {} MiB after 20 changes; EndpointSlice change → watching proxy: p50 {:?}, max {:?} (20 changes)",
        SERVICES * ENDPOINTS,
        rss / 1024,
        rss_after / 1024,
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
}
