//! The Policy API end to end, in process: a control plane serving a registry
//! file, a tonic client watching outbound and inbound policy.

use mesh_control::{Config, Control, RegistryConfig};
use mesh_proto::policy::policy_client::PolicyClient;
use mesh_proto::policy::{DefaultAction, InboundPolicy, InboundRequest, OutboundPolicy, OutboundRequest};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Streaming;
use tonic::transport::Channel;

const REGISTRY: &str = "\
services:
  - name: books
    ports: [{port: 7001, targetPort: 8001}]
    endpoints: [{ip: 127.0.0.1}]
  - name: books-v2
    ports: [{port: 7001}]
routes:
  - name: books-routes
    service: books
    rules:
      - name: canary
        matches: [{headers: [{name: x-canary, exact: \"1\"}]}]
        backends: [{service: books-v2}]
      - name: rest
        timeout: 1s
authorizations:
  - name: books-authz
    service: books
    rules:
      - {name: lan, networks: [10.0.0.0/8]}
";

/// Replaces the file the way editors do.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn start(dir: &Path) -> Control {
    let path = dir.join("registry.yaml");
    write(&path, REGISTRY);
    let mut config = Config::with_file(&path);
    config.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.registry = RegistryConfig::File { path, poll_interval: Duration::from_millis(20) };
    Control::start(config).await.expect("control plane starts")
}

async fn client(control: &Control) -> PolicyClient<Channel> {
    PolicyClient::connect(format!("http://{}", control.grpc_addr())).await.expect("connect")
}

/// The next message within `wait`, `None` when there is none by then.
async fn next<T>(stream: &mut Streaming<T>, wait: Duration) -> Option<T> {
    match tokio::time::timeout(wait, stream.message()).await {
        Ok(Ok(Some(message))) => Some(message),
        Ok(Ok(None)) => panic!("stream ended"),
        Ok(Err(status)) => panic!("stream failed: {status}"),
        Err(_) => None,
    }
}

async fn metrics(control: &Control) -> String {
    let mut conn = tokio::net::TcpStream::connect(control.admin_addr()).await.expect("admin");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n").await.expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).await.expect("response");
    text
}

fn route_names(policy: &OutboundPolicy) -> Vec<&str> {
    policy.routes.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn policies_stream_and_follow_the_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = start(dir.path()).await;
    let path = dir.path().join("registry.yaml");
    let mut api = client(&control).await;

    let out = api.watch_outbound(OutboundRequest { target: "books.default:7001".into() }).await;
    let mut out = out.expect("outbound watch").into_inner();
    let first = next(&mut out, Duration::from_secs(1)).await.expect("the full policy first");
    assert!(first.exists);
    assert_eq!(first.service, "books.default:7001");
    assert_eq!(route_names(&first), ["books-routes/canary", "books-routes/rest"]);
    assert_eq!(first.routes[0].backends[0].target, "books-v2.default:7001");

    let inbound = InboundRequest { namespace: "default".into(), service_account: "books".into(), port: 8001 };
    let mut inb = api.watch_inbound(inbound).await.expect("inbound watch").into_inner();
    let first_in: InboundPolicy = next(&mut inb, Duration::from_secs(1)).await.expect("the full policy first");
    assert_eq!(first_in.name, "books-authz");
    assert_eq!(first_in.default, DefaultAction::Deny as i32);
    assert_eq!(first_in.authorizations[0].networks, ["10.0.0.0/8"]);

    let text = metrics(&control).await;
    assert!(text.contains("policy_watchers{api=\"outbound\"} 1"), "{text}");
    assert!(text.contains("policy_watchers{api=\"inbound\"} 1"), "{text}");

    // A valid change: the outbound policy is sent again within a second; the
    // unchanged inbound policy is not.
    write(&path, &REGISTRY.replace("timeout: 1s", "timeout: 3s"));
    let changed = next(&mut out, Duration::from_secs(1)).await.expect("a new policy within 1 s");
    assert_eq!(changed.routes[1].timeout.map(|d| d.millis), Some(3000));
    assert_eq!(next(&mut inb, Duration::from_millis(300)).await, None, "inbound policy unchanged");

    // An invalid change (unknown backend) is rejected: nothing is sent, the
    // last good policy stays.
    write(&path, &REGISTRY.replace("timeout: 1s", "timeout: 5s").replace("{service: books-v2}", "{service: gone}"));
    assert_eq!(next(&mut out, Duration::from_millis(500)).await, None, "no message for a rejected file");
    let text = metrics(&control).await;
    assert!(text.contains("registry_reloads_total{registry=\"file\",result=\"error\"} 1"), "{text}");
    let mut again = client(&control).await;
    let out2 = again.watch_outbound(OutboundRequest { target: "books.default:7001".into() }).await;
    let current = next(&mut out2.expect("watch").into_inner(), Duration::from_secs(1)).await.expect("policy");
    assert_eq!(current, changed, "the last good policy is served");

    // The authorization goes: the inbound policy becomes the default.
    let without_authz = REGISTRY.split("authorizations:").next().expect("text").replace("timeout: 1s", "timeout: 3s");
    write(&path, &without_authz);
    let default = next(&mut inb, Duration::from_secs(1)).await.expect("a new inbound policy");
    assert_eq!((default.name.as_str(), default.default), ("default", DefaultAction::Allow as i32));

    // Shutdown ends the streams.
    control.trigger().trigger();
    let ended = tokio::time::timeout(Duration::from_secs(2), out.message()).await.expect("stream ends");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    control.shutdown().await;
}

#[tokio::test]
async fn invalid_targets_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = start(dir.path()).await;
    let mut api = client(&control).await;
    for target in ["books", "books.default:0", "a.b.example.com:80", ""] {
        let status = api.watch_outbound(OutboundRequest { target: target.into() }).await.expect_err(target);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{target}: {status}");
    }
    for (namespace, service_account, port) in [("default", "books", 0), ("", "books", 80), ("default", "Books", 80)] {
        let req = InboundRequest { namespace: namespace.into(), service_account: service_account.into(), port };
        let status = api.watch_inbound(req).await.expect_err("invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    }
    // Unknown but well-formed targets are answered (exists: false / default).
    let out = api.watch_outbound(OutboundRequest { target: "10.9.9.9:80".into() }).await.expect("watch");
    let policy = next(&mut out.into_inner(), Duration::from_secs(1)).await.expect("policy");
    assert!(!policy.exists && policy.routes.is_empty());
    control.shutdown().await;
}
