//! Protocol detection by sniffing a connection's first bytes.
//!
//! The classifier is a pure function over a byte prefix; [`sniff`] feeds it
//! from a socket under a deadline. Server-first protocols (the client sends
//! nothing until the server speaks) end at the deadline as opaque TCP, so they
//! are delayed by at most the detection timeout, never hung.

use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (gRPC included).
    Http2,
    /// A TLS ClientHello.
    Tls,
    /// Anything else: forwarded as bytes.
    Opaque,
}

impl Protocol {
    /// A short lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1",
            Protocol::Http2 => "http/2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

/// The classifier's verdict on a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Decided.
    Is(Protocol),
    /// Not enough bytes yet.
    NeedMore,
}

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many bytes the classifier looks at, at most. A request line longer
/// than this that still looks like HTTP is treated as HTTP/1 (the HTTP server
/// enforces its own limits on it).
pub const MAX_SNIFF: usize = 5 + MAX_TLS_RECORD;

/// The largest TLS record (2^14 bytes of plaintext plus expansion).
const MAX_TLS_RECORD: usize = 16 * 1024 + 2048;

/// Classifies a connection from its first bytes.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() { Verdict::Is(Protocol::Http2) } else { Verdict::NeedMore };
    }
    // A TLS record: handshake (0x16), version major 3. Wait for the whole
    // first record, so the ClientHello (and its ALPN) can be read.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => Verdict::NeedMore,
            Some(3) => match buf.get(3..5) {
                None => Verdict::NeedMore,
                Some(len) => {
                    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                    if len > MAX_TLS_RECORD {
                        Verdict::Is(Protocol::Opaque)
                    } else if buf.len() < 5 + len {
                        Verdict::NeedMore
                    } else {
                        Verdict::Is(Protocol::Tls)
                    }
                }
            },
            Some(_) => Verdict::Is(Protocol::Opaque),
        };
    }
    classify_http1(buf)
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`, judged as far as bytes allow.
fn classify_http1(buf: &[u8]) -> Verdict {
    let opaque = Verdict::Is(Protocol::Opaque);
    let line_end = buf.iter().position(|&b| b == b'\n');
    let line = match line_end {
        Some(i) => &buf[..i],
        None => buf,
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if method.is_empty() || method.len() > 32 || !method.iter().all(|&b| is_tchar(b)) {
        return if line_end.is_none() && !method.is_empty() && method.iter().all(|&b| is_tchar(b)) {
            Verdict::NeedMore
        } else {
            opaque
        };
    }
    let Some(target) = parts.next() else {
        return if line_end.is_none() { Verdict::NeedMore } else { opaque };
    };
    if target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return opaque;
    }
    let Some(version) = parts.next() else {
        return match line_end {
            None if buf.len() >= MAX_SNIFF => Verdict::Is(Protocol::Http1),
            None => Verdict::NeedMore,
            Some(_) => opaque,
        };
    };
    const V: &[u8] = b"HTTP/1.";
    match line_end {
        Some(_) if version.len() == V.len() + 1 && version.starts_with(V) && version[V.len()].is_ascii_digit() => {
            Verdict::Is(Protocol::Http1)
        }
        Some(_) => opaque,
        None if version.len() <= V.len() && V.starts_with(version) => Verdict::NeedMore,
        None if version.len() == V.len() + 1 && version.starts_with(V) => Verdict::NeedMore,
        None => opaque,
    }
}

/// The ALPN protocols a TLS ClientHello offers, read from the first record
/// (as [`classify`] returns it). `None` when the bytes are not a ClientHello.
pub fn client_hello_alpns(record: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut r = Reader(record);
    if r.u8()? != 0x16 {
        return None;
    }
    r.skip(2)?; // legacy record version
    let n = usize::from(r.u16()?);
    let mut rec = Reader(r.take(n)?);
    if rec.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    let n = rec.u24()?;
    let mut hello = Reader(rec.take(n)?);
    hello.skip(2 + 32)?; // client version, random
    let n = usize::from(hello.u8()?);
    hello.skip(n)?; // session id
    let n = usize::from(hello.u16()?);
    hello.skip(n)?; // cipher suites
    let n = usize::from(hello.u8()?);
    hello.skip(n)?; // compression methods
    if hello.0.is_empty() {
        return Some(Vec::new()); // no extensions
    }
    let n = usize::from(hello.u16()?);
    let mut exts = Reader(hello.take(n)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let n = usize::from(exts.u16()?);
        let mut data = Reader(exts.take(n)?);
        if ty == 16 {
            let n = usize::from(data.u16()?);
            let mut list = Reader(data.take(n)?);
            let mut out = Vec::new();
            while !list.0.is_empty() {
                let n = usize::from(list.u8()?);
                out.push(list.take(n)?.to_vec());
            }
            return Some(out);
        }
    }
    Some(Vec::new())
}

/// A bounds-checked big-endian reader: every step returns `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` until the protocol is known, the deadline passes, or the
/// peer stops sending. Returns the protocol and every byte read, to replay.
pub async fn sniff<I: AsyncRead + Unpin>(io: &mut I, timeout: Duration) -> std::io::Result<(Protocol, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if buf.len() >= MAX_SNIFF {
            return Ok((Protocol::Opaque, buf.freeze()));
        }
        buf.reserve(1024);
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            // Deadline: whatever the peer sent (maybe nothing) goes through as TCP.
            Err(_elapsed) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
        }
        if let Verdict::Is(p) = classify(&buf) {
            return Ok((p, buf.freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn recognizes_http1_requests() {
        for req in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /a?b=c HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
        ] {
            assert_eq!(classify(req), Verdict::Is(Protocol::Http1), "{:?}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn waits_for_more_on_partial_lines() {
        for partial in [&b"G"[..], b"GET", b"GET /", b"GET / HT", b"GET / HTTP/1.", b"GET / HTTP/1.1", b"PRI * HTTP/2"]
        {
            assert_eq!(classify(partial), Verdict::NeedMore, "{:?}", String::from_utf8_lossy(partial));
        }
    }

    #[test]
    fn recognizes_h2_and_tls() {
        assert_eq!(classify(H2_PREFACE), Verdict::Is(Protocol::Http2));
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x00, 0x02]), Verdict::NeedMore, "waits for the whole record");
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x00, 0x02, 1, 2]), Verdict::Is(Protocol::Tls));
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0xff, 0xff]), Verdict::Is(Protocol::Opaque), "oversized record");
    }

    /// A real ClientHello, as a mesh client writes it: its first TLS record.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let anchor = mesh_identity::ca::generate_trust_anchor("t", Duration::from_secs(60)).expect("anchor");
        let anchors = mesh_identity::pem::certs(&anchor.cert_pem).expect("pem");
        let creds = mesh_identity::tls::Credentials::new(anchors).expect("creds");
        let cfg = creds.client_config("spiffe://t/ns/default/sa/server", alpn).expect("config");
        let name = mesh_identity::tls::server_name("example.com").expect("name");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let (client, mut server) = tokio::io::duplex(64 * 1024);
            let handshake = tokio::spawn(mesh_identity::tls::connect(cfg, name, client));
            let mut record = vec![0u8; 5];
            server.read_exact(&mut record).await.expect("record header");
            let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
            record.resize(5 + len, 0);
            server.read_exact(&mut record[5..]).await.expect("record body");
            handshake.abort();
            record
        })
    }

    #[test]
    fn reads_alpn_from_real_client_hellos() {
        let hello = client_hello(&[b"mesh/h2", b"h2"]);
        assert_eq!(classify(&hello), Verdict::Is(Protocol::Tls));
        assert_eq!(client_hello_alpns(&hello), Some(vec![b"mesh/h2".to_vec(), b"h2".to_vec()]));
        assert_eq!(client_hello_alpns(&client_hello(&[])), Some(vec![]));
        // Every truncation is handled without panicking.
        for n in 0..hello.len() {
            let _ = client_hello_alpns(&hello[..n]);
        }
        assert_eq!(client_hello_alpns(b"GET / HTTP/1.1"), None);
    }

    #[test]
    fn everything_else_is_opaque() {
        for other in [
            &b"\x00\x01\x02"[..],
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"GET / SPDY/3\r\n",
            b"HELLO\r\n",
            b"get\x01",
            b"\x16\x01",
            b"GET /\x00 HTTP/1.1\r\n",
        ] {
            assert_eq!(classify(other), Verdict::Is(Protocol::Opaque), "{:?}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn never_panics_on_arbitrary_prefixes() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let _ = classify(&bytes);
        }
    }

    #[tokio::test]
    async fn silent_clients_time_out_as_opaque() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (p, buf) = sniff(&mut server, Duration::from_millis(20)).await.expect("sniff");
        assert_eq!(p, Protocol::Opaque);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn sniff_keeps_the_bytes() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        let (p, buf) = sniff(&mut server, Duration::from_secs(1)).await.expect("sniff");
        assert_eq!(p, Protocol::Http1);
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
    }
}
