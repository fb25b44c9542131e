//! Garbage for robustness tests: what broken or hostile clients send to a
//! listener (and how slowly), whether the listener closed each connection
//! in time, and what a process holds (resident memory, open descriptors)
//! read from `/proc`.

use mesh_identity::tls::Credentials;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One kind of bad client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Random bytes (a seeded length between 1 and 2 KiB), then waits.
    RandomBytes,
    /// A real ClientHello cut in the middle of its record, then silence.
    TruncatedHello,
    /// A whole ClientHello (offering mesh ALPNs), then silence: the server
    /// answers and waits for a Finished that never comes.
    StalledHandshake,
    /// The HTTP/2 preface, then frames that are nonsense.
    H2Junk,
    /// The HTTP/2 preface, then nothing (no SETTINGS).
    H2Silent,
    /// An HTTP/1 request line, then header bytes one every 100 ms.
    TrickledHeaders,
    /// A ClientHello one byte every 100 ms.
    TrickledHello,
    /// Connects and never sends a byte.
    Silent,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::RandomBytes,
        Kind::TruncatedHello,
        Kind::StalledHandshake,
        Kind::H2Junk,
        Kind::H2Silent,
        Kind::TrickledHeaders,
        Kind::TrickledHello,
        Kind::Silent,
    ];
}

/// How one bad connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server closed it this long after the connect.
    Closed(Duration),
    /// Still open when the client gave up waiting.
    Open,
    /// The connect itself failed (the listener is gone or refusing).
    ConnectFailed(String),
}

/// The first TLS record a mesh client sends: a real ClientHello offering
/// `mesh/h2` and `h2`, made by the mesh's own TLS client (`creds` need only
/// a trust bundle).
pub async fn client_hello(creds: &Arc<Credentials>, expected_server: &str) -> Vec<u8> {
    let cfg = creds.client_config(expected_server, &[b"mesh/h2", b"h2"]).unwrap();
    let name = mesh_identity::tls::server_name("127.0.0.1").unwrap();
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let handshake = tokio::spawn(mesh_identity::tls::connect(cfg, name, client));
    let mut record = vec![0u8; 5];
    server.read_exact(&mut record).await.unwrap();
    let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
    record.resize(5 + len, 0);
    server.read_exact(&mut record[5..]).await.unwrap();
    handshake.abort();
    record
}

/// Connects to `addr`, behaves as `kind` (`seed` varies random inputs),
/// and waits up to `bound` from the connect for the server to close.
pub async fn play(addr: SocketAddr, kind: Kind, seed: u64, hello: &[u8], bound: Duration) -> Outcome {
    let start = Instant::now();
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::ConnectFailed(e.to_string()),
    };
    let (mut rd, mut wr) = stream.into_split();
    let (burst, trickle): (Vec<u8>, Vec<u8>) = match kind {
        Kind::RandomBytes => {
            let mut rng = fastrand::Rng::with_seed(seed);
            ((0..rng.usize(1..2048)).map(|_| rng.u8(..)).collect(), Vec::new())
        }
        Kind::TruncatedHello => (hello[..hello.len() / 2].to_vec(), Vec::new()),
        Kind::StalledHandshake => (hello.to_vec(), Vec::new()),
        Kind::H2Junk => {
            let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            // A SETTINGS frame of the wrong length on stream 1, then noise.
            b.extend_from_slice(&[0, 0, 5, 4, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5]);
            b.extend_from_slice(&[0xff; 64]);
            (b, Vec::new())
        }
        Kind::H2Silent => (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Vec::new()),
        Kind::TrickledHeaders => (b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec(), vec![b'a'; 600]),
        Kind::TrickledHello => (Vec::new(), hello.to_vec()),
        Kind::Silent => (Vec::new(), Vec::new()),
    };
    let writer = tokio::spawn(async move {
        if wr.write_all(&burst).await.is_err() {
            return wr;
        }
        for b in trickle {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
        }
        // Keep the write side open: half-closing would be a clean end.
        wr
    });
    let closed = tokio::time::timeout(bound.saturating_sub(start.elapsed()), async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    let outcome = if closed.is_ok() { Outcome::Closed(start.elapsed()) } else { Outcome::Open };
    writer.abort();
    outcome
}

/// What a process holds: resident memory (`VmRSS`) and open descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Entries in `/proc/PID/fd`.
    pub fds: usize,
}

/// What process `pid` holds now.
pub fn footprint(pid: u32) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    Footprint { rss_kib, fds }
}

/// The `listener_open_connections` gauges in a metrics text, by listener.
pub fn open_by_listener(metrics: &str) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("listener_open_connections{listener=\""))
        .filter_map(|rest| {
            let (name, value) = rest.split_once("\"} ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    out.sort();
    out
}

/// `GET /metrics` on `admin` over a connection the server closes after
/// answering (`Connection: close`), read to its end: so no earlier scrape's
/// connection is still open (and counted) when the next one is made.
pub async fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Completes a real TLS handshake with `addr` (a server presenting
/// `expected_server`, offering ALPN `h2`), then says nothing; waits up to
/// `bound` from the connect for the server to close.
pub async fn tls_then_silent(
    addr: SocketAddr,
    creds: &Arc<Credentials>,
    expected_server: &str,
    bound: Duration,
) -> Outcome {
    let start = Instant::now();
    let tcp = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::ConnectFailed(e.to_string()),
    };
    let cfg = creds.client_config(expected_server, &[b"h2"]).unwrap();
    let name = mesh_identity::tls::server_name(&addr.ip().to_string()).unwrap();
    let mut tls = match mesh_identity::tls::connect(cfg, name, tcp).await {
        Ok(s) => s,
        Err(e) => return Outcome::ConnectFailed(format!("TLS handshake: {e}")),
    };
    let closed = tokio::time::timeout(bound.saturating_sub(start.elapsed()), async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if closed.is_ok() { Outcome::Closed(start.elapsed()) } else { Outcome::Open }
}
