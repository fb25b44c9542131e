//! The response parser, and the load against a real socket server that
//! drops some requests.

use super::*;
use std::net::TcpListener;

fn parse(raw: &str) -> Result<Option<Answer>, String> {
    parse_response(raw.as_bytes())
}

#[test]
fn complete_and_incomplete_responses() {
    let ok = Answer { status: 200, replica: Some("r1".into()), close: false };
    assert_eq!(parse("HTTP/1.1 200 OK\r\nx-replica: r1\r\ncontent-length: 2\r\n\r\nr1"), Ok(Some(ok.clone())));
    assert_eq!(parse("HTTP/1.1 200 OK\r\nX-Replica: r1\r\nContent-Length: 2\r\n\r\nr"), Ok(None));
    assert_eq!(parse("HTTP/1.1 200 OK\r\nx-replica: r1\r\ncontent-len"), Ok(None));
    let chunked = "HTTP/1.1 200 OK\r\nx-replica: r1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nr1\r\n0\r\n\r\n";
    assert_eq!(parse(chunked), Ok(Some(ok)));
    assert_eq!(parse(&chunked[..chunked.len() - 2]), Ok(None));
    let closing = parse("HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(closing, Ok(Some(Answer { status: 503, replica: None, close: true })));
}

#[test]
fn malformed_responses_are_errors() {
    assert!(parse("SSH-2.0-OpenSSH\r\n\r\n").is_err());
    assert!(parse("HTTP/1.1 abc OK\r\n\r\n").is_err());
    assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    assert!(parse("HTTP/1.1 200 OK\r\n\r\nbody without framing").is_err());
    assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nab").is_err());
    assert!(parse_response(&[b'x'; MAX_HEAD + 1]).is_err());
}

/// A keep-alive server on loopback that answers the first `per_conn`
/// requests of each connection with 200 and then closes it without
/// answering the next one (as a proxy racing a drain would).
fn flaky_server(per_conn: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                for _ in 0..per_conn {
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let rsp = b"HTTP/1.1 200 OK\r\nx-replica: flaky\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(rsp).is_err() {
                        return;
                    }
                }
                // Read the next request, then drop the connection unanswered.
                let _ = s.read(&mut buf);
            });
        }
    });
    addr
}

/// Catches a load generator that retries a failed request on a new
/// connection (hiding the failure) or does not count it: every third
/// request here is dropped, and each must show as one failure.
#[test]
fn every_dropped_request_is_counted_and_not_retried() {
    let load = Load::start(flaky_server(2), 200, 2).expect("load starts");
    std::thread::sleep(Duration::from_millis(600));
    let stats = load.stats.clone();
    load.stop();
    let (sent, ok, failed) =
        (stats.sent.load(Ordering::Relaxed), stats.ok.load(Ordering::Relaxed), stats.failed.load(Ordering::Relaxed));
    assert!(sent >= 30, "only {sent} requests sent");
    assert_eq!(sent, ok + failed, "every attempt is an answer or a failure");
    // Each connection carries 2 answers and then 1 failure.
    assert!(failed * 2 >= ok - 2 && failed * 2 <= ok + 4, "{ok} ok and {failed} failed: expected 2:1");
    assert_eq!(stats.replicas().get("flaky"), Some(&ok));
    assert!(stats.failures().iter().all(|(_, why)| why.contains("closed by the proxy")), "{:?}", stats.failures());
}

/// Catches a load that stops counting when nothing listens: every attempt
/// to a closed port fails.
#[test]
fn refused_connections_fail() {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let load = Load::start(SocketAddr::from(([127, 0, 0, 1], port)), 100, 1).expect("load starts");
    std::thread::sleep(Duration::from_millis(200));
    let stats = load.stats.clone();
    load.stop();
    assert!(stats.sent.load(Ordering::Relaxed) >= 5);
    assert_eq!(stats.ok.load(Ordering::Relaxed), 0);
    assert_eq!(stats.failed.load(Ordering::Relaxed), stats.sent.load(Ordering::Relaxed));
}
