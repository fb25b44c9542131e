use super::*;
use mesh_identity::SpiffeId;
use mesh_identity::ca::{self, IssuerCa};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: Duration = Duration::from_secs(86_400);

/// A CA and leaves for the relays' identities.
struct Pki {
    anchors: String,
    issuer: IssuerCa,
}

impl Pki {
    fn new() -> Self {
        let anchor = ca::generate_trust_anchor("floor.test", DAY).expect("anchor");
        let issuer = ca::generate_issuer("floor.test", &anchor, DAY).expect("issuer");
        let anchors = mesh_identity::pem::certs(&anchor.cert_pem).expect("anchor pem");
        let issuer = IssuerCa::load(&issuer.cert_pem, &issuer.key_pem, &anchors).expect("issuer loads");
        Self { anchors: anchor.cert_pem, issuer }
    }

    /// (chain PEM, key PEM) for service account `account`.
    fn leaf(&self, account: &str) -> (String, String) {
        let id = SpiffeId::new("floor.test", "default", account).expect("id");
        let (leaf, key) = self.issuer.issue_with_key(&id, &[], DAY).expect("leaf");
        (mesh_identity::pem::encode_certs(&leaf.chain), key.serialize_pem())
    }

    fn hop(&self, side: Side, account: &str, peer: &str) -> Hop {
        let (chain, key) = self.leaf(account);
        let pems = Pems { chain: &chain, key: &key, anchors: &self.anchors };
        Hop::tls(side, pems, &format!("spiffe://floor.test/ns/default/sa/{peer}")).expect("hop")
    }
}

/// A TCP echo server that counts the connections it accepted.
async fn echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// Starts a relay in front of `to`; returns where it listens.
async fn start(to: SocketAddr, hop: Hop) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, to, hop));
    addr
}

/// Sends 1 MiB of numbered bytes through `entry` while reading the echo,
/// half-closes, and returns what came back before EOF.
async fn round_trip(entry: SocketAddr) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let sent: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let s = TcpStream::connect(entry).await?;
    let (mut r, mut w) = s.into_split();
    let out = sent.clone();
    let writer = tokio::spawn(async move {
        for chunk in out.chunks(7_919) {
            w.write_all(chunk).await?;
        }
        w.shutdown().await
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut got)).await.map_err(std::io::Error::other)??;
    writer.await.map_err(std::io::Error::other)??;
    Ok((sent, got))
}

/// Bytes through the TCP pair and the TLS pair arrive intact and in order
/// both ways, and a half-close travels to the app and back. Catches a
/// relay that drops, reorders or truncates bytes in either direction, loses
/// the half-close (the read would hang or end early), or (TLS) relays
/// without completing the mutual handshake.
#[tokio::test(flavor = "current_thread")]
async fn bytes_arrive_intact_both_ways() {
    let (app, _) = echo().await;
    let server = start(app, Hop::Plain).await;
    let client = start(server, Hop::Plain).await;
    let (sent, got) = round_trip(client).await.expect("tcp pair");
    assert!(got == sent, "TCP pair: {} bytes back of {}, or out of order", got.len(), sent.len());

    let pki = Pki::new();
    let server = start(app, pki.hop(Side::Accept, "server", "client")).await;
    let client = start(server, pki.hop(Side::Connect, "client", "server")).await;
    let (sent, got) = round_trip(client).await.expect("tls pair");
    assert!(got == sent, "TLS pair: {} bytes back of {}, or out of order", got.len(), sent.len());
}

/// The TLS server relay refuses a client relay with another identity from
/// the same CA, and the client relay refuses a server with the wrong
/// identity: no byte reaches the app. Catches a relay that skips the
/// client-identity check or the server's SPIFFE ID check (mTLS in name only).
#[tokio::test(flavor = "current_thread")]
async fn tls_refuses_a_peer_with_the_wrong_certificate() {
    let (app, accepted) = echo().await;
    let pki = Pki::new();
    let server = start(app, pki.hop(Side::Accept, "server", "client")).await;
    for (who, hop) in [
        ("a client relay with another identity", pki.hop(Side::Connect, "intruder", "server")),
        ("a client relay expecting another server", pki.hop(Side::Connect, "client", "someone-else")),
    ] {
        let client = start(server, hop).await;
        let got = round_trip(client).await.map(|(_, got)| got.len());
        assert!(!matches!(got, Ok(n) if n > 0), "{who}: bytes came back: {got:?}");
    }
    // Settle: a refused handshake never reaches the app.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the app got a connection through a refused relay");
}
