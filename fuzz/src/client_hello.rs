//! The ClientHello ALPN reader (`mesh-proxy/src/detect.rs`), which decides
//! whether the inbound side terminates mTLS (a mesh ALPN) or forwards the
//! app's own TLS untouched.
//!
//! Even first byte: the bytes are a first TLS record as a peer sent it; the
//! reader must not panic and what it returns must come from the record.
//! Odd first byte: the rest describes a well-formed ClientHello (random
//! session id, cipher suites, extensions in random order, and maybe an ALPN
//! list), which is encoded and read back: the reader must find exactly the
//! ALPN list that was encoded, and detection must call it TLS.

use arbitrary::{Result, Unstructured};
use mesh_proxy::fuzzing::{Detected, Verdict, classify, client_hello_alpns, is_mesh_hello};

/// ALPN ids worth drawing often: the mesh's, and common ones.
const KNOWN_ALPNS: [&[u8]; 7] =
    [b"mesh/http1", b"mesh/h2", b"mesh/opaque", b"mesh/probe", b"h2", b"http/1.1", b"grpc-exp"];
/// How many of [`KNOWN_ALPNS`] (the first ones) name mesh protocols.
const MESH: usize = 4;

/// The ALPN extension's type.
const ALPN: u16 = 16;

/// Runs one input.
pub fn run(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            let _ = structured(rest);
        }
        _ => raw(data),
    }
}

fn raw(data: &[u8]) {
    if let Some(alpns) = client_hello_alpns(data) {
        let bytes: usize = alpns.iter().map(|a| a.len() + 1).sum();
        assert!(bytes < data.len(), "ALPN ids ({bytes} bytes) larger than the record ({} bytes)", data.len());
        assert_eq!(data.first(), Some(&0x16));
        let _ = is_mesh_hello(&alpns);
    }
}

fn structured(rest: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(rest);
    let alpns: Option<Vec<Vec<u8>>> = if u.arbitrary()? {
        let n = u.int_in_range(0..=6)?;
        let mut list = Vec::new();
        for _ in 0..n {
            list.push(if u.ratio(1, 2)? {
                u.choose(&KNOWN_ALPNS)?.to_vec()
            } else {
                let len = u.int_in_range(1..=255)?;
                u.bytes(len)?.to_vec()
            });
        }
        Some(list)
    } else {
        None
    };
    let mut exts: Vec<(u16, Vec<u8>)> = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        let ty: u16 = u.arbitrary()?;
        if ty == ALPN {
            continue;
        }
        let len = u.int_in_range(0..=64)?;
        exts.push((ty, u.bytes(len)?.to_vec()));
    }
    if let Some(list) = &alpns {
        let mut body = Vec::new();
        let total: usize = list.iter().map(|a| a.len() + 1).sum();
        put_u16(&mut body, total);
        for a in list {
            body.push(u8::try_from(a.len()).unwrap_or(u8::MAX));
            body.extend_from_slice(a);
        }
        let at = u.int_in_range(0..=exts.len())?;
        exts.insert(at, (ALPN, body));
    }
    // No extensions block at all is legal when there is no ALPN to send.
    let omit_extensions = exts.is_empty() && u.arbitrary()?;

    let mut hello = vec![3, 3];
    hello.extend_from_slice(u.bytes(32)?);
    let sid: u8 = u.int_in_range(0..=32)?;
    hello.push(sid);
    hello.extend_from_slice(u.bytes(usize::from(sid))?);
    let suites = 2 * usize::from(u.int_in_range(1..=32u8)?);
    put_u16(&mut hello, suites);
    hello.extend_from_slice(u.bytes(suites)?);
    hello.extend_from_slice(&[1, 0]);
    if !omit_extensions {
        let len: usize = exts.iter().map(|(_, d)| 4 + d.len()).sum();
        put_u16(&mut hello, len);
        for (ty, d) in &exts {
            put_u16(&mut hello, usize::from(*ty));
            put_u16(&mut hello, d.len());
            hello.extend_from_slice(d);
        }
    }
    let mut handshake = vec![1];
    handshake.extend_from_slice(&u32::try_from(hello.len()).unwrap_or(u32::MAX).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 3, *u.choose(&[1u8, 3])?];
    put_u16(&mut record, handshake.len());
    record.extend_from_slice(&handshake);
    // The next record may follow in the same read.
    let trailing = u.int_in_range(0..=8)?;
    record.extend_from_slice(u.bytes(trailing)?);

    assert_eq!(classify(&record), Verdict::Is(Detected::Tls), "a whole ClientHello record is TLS");
    let want = alpns.unwrap_or_default();
    assert_eq!(client_hello_alpns(&record), Some(want.clone()), "the ALPN list read back differs");
    let mesh = want.iter().any(|a| KNOWN_ALPNS[..MESH].contains(&a.as_slice()));
    assert_eq!(is_mesh_hello(&want), mesh);
    // Any truncation inside the record is refused or read without panicking.
    let cut = u.int_in_range(0..=record.len())?;
    let _ = client_hello_alpns(&record[..cut]);
    Ok(())
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
}

#[cfg(test)]
mod tests {
    /// Catches the oracle falling behind the proxy: a mesh ALPN added to
    /// the proxy (as `mesh/probe` was) but not here makes the property
    /// "mesh iff one of ours" fail in the fuzzer, seconds into CI's run.
    #[test]
    fn the_oracles_mesh_alpns_are_the_proxys() {
        let mut ours: Vec<&[u8]> = super::KNOWN_ALPNS[..super::MESH].to_vec();
        let mut proxys: Vec<&[u8]> = mesh_proxy::fuzzing::MESH_ALPNS.to_vec();
        ours.sort();
        proxys.sort();
        assert_eq!(ours, proxys);
    }
}
