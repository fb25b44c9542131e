//! The Workloads API end to end, in process: proxies (tonic clients)
//! register, `/proxies` on the admin port lists them, and a proxy whose
//! stream ends is forgotten.

use mesh_control::{Config, Control, RegistryConfig};
use mesh_proto::workloads::RegisterRequest;
use mesh_proto::workloads::workloads_client::WorkloadsClient;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(dir: &Path) -> Control {
    let path = dir.join("registry.yaml");
    std::fs::write(&path, "services: []\n").expect("write the registry");
    let mut config = Config::with_file(&path);
    config.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.registry = RegistryConfig::File { path, poll_interval: Duration::from_millis(50) };
    Control::start(config).await.expect("control plane starts")
}

/// `GET /proxies` on the admin port, as JSON.
async fn proxies(control: &Control) -> serde_json::Value {
    let mut conn = tokio::net::TcpStream::connect(control.admin_addr()).await.expect("admin");
    conn.write_all(b"GET /proxies HTTP/1.0\r\nHost: admin\r\n\r\n").await.expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).await.expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).expect("JSON")
}

fn workloads(doc: &serde_json::Value) -> Vec<String> {
    doc["proxies"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p["workload"].as_str().expect("a name").to_string())
        .collect()
}

fn request(workload: &str, admin: &str, inbound: &str) -> RegisterRequest {
    RegisterRequest {
        workload: workload.into(),
        identity: format!("spiffe://demo.mesh/ns/default/sa/{}", workload.split('-').next().unwrap_or_default()),
        admin_addr: admin.into(),
        inbound_addr: inbound.into(),
        version: "test".into(),
    }
}

#[tokio::test]
async fn proxies_stay_listed_while_their_stream_is_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let control = start(dir.path()).await;
    let url = format!("http://{}", control.grpc_addr());
    assert_eq!(workloads(&proxies(&control).await), Vec::<String>::new());

    let mut books = WorkloadsClient::connect(url.clone()).await.expect("connect");
    let mut books_stream =
        books.register(request("books-0", "0.0.0.0:4191", "0.0.0.0:4143")).await.expect("register").into_inner();
    let ack = books_stream.message().await.expect("an ack").expect("not the end");
    // The unspecified IP became the one the connection came from.
    assert_eq!((ack.admin_addr.as_str(), ack.inbound_addr.as_str()), ("127.0.0.1:4191", "127.0.0.1:4143"));

    let mut web = WorkloadsClient::connect(url.clone()).await.expect("connect");
    let mut web_stream = web.register(request("web-0", "127.0.0.1:5191", "")).await.expect("register").into_inner();
    web_stream.message().await.expect("an ack").expect("not the end");

    let doc = proxies(&control).await;
    assert_eq!(workloads(&doc), ["books-0", "web-0"]);
    let b = &doc["proxies"][0];
    assert_eq!(b["admin_addr"], "127.0.0.1:4191");
    assert_eq!(b["identity"], "spiffe://demo.mesh/ns/default/sa/books");
    assert_eq!(b["version"], "test");
    assert!(b["remote_addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{b}");
    assert_eq!(doc["proxies"][1]["inbound_addr"], serde_json::Value::Null);

    // The stream stays open: no second message, no end.
    assert!(tokio::time::timeout(Duration::from_millis(200), web_stream.message()).await.is_err());

    // books goes away: its connection closes and it is forgotten.
    drop(books_stream);
    drop(books);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let names = workloads(&proxies(&control).await);
        if names == ["web-0"] {
            break;
        }
        assert!(Instant::now() < deadline, "books-0 still listed: {names:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A bad registration is refused and not listed.
    let err = web.register(request("", "127.0.0.1:1", "")).await.expect_err("no name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(workloads(&proxies(&control).await), ["web-0"]);

    // Shutting down ends the streams (proxies then reconnect to a successor).
    control.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(5), web_stream.message()).await.expect("the stream ends");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}
