//! Protocol detection (`mesh-proxy/src/detect.rs`) on a connection's first
//! bytes: never panics, and a verdict does not depend on how the bytes were
//! split into reads (the sniffer classifies after every read and stops at
//! the first verdict, so a prefix's verdict must be the whole input's).

use mesh_proxy::fuzzing::{Detected, H2_PREFACE, Verdict, classify, client_hello_alpns};

/// Classifies `data` and every split of it the sniffer could see.
pub fn run(data: &[u8]) {
    let whole = classify(data);
    // Every prefix for short inputs (where the protocol is decided), a few
    // spread over longer ones.
    let step = (data.len() / 64).max(1);
    for end in (0..data.len()).step_by(step) {
        if let Verdict::Is(p) = classify(&data[..end]) {
            assert_eq!(
                whole,
                Verdict::Is(p),
                "the first {end} bytes were classified {p:?}, all {} bytes differently",
                data.len()
            );
        }
    }
    match whole {
        Verdict::Is(Detected::Http2) => assert!(data.starts_with(H2_PREFACE), "HTTP/2 without its preface"),
        Verdict::Is(Detected::Tls) => {
            // What the inbound side does next: read the ALPN (must not panic).
            let _ = client_hello_alpns(data);
            assert_eq!(data.first(), Some(&0x16), "TLS without a handshake record");
        }
        Verdict::Is(Detected::Http1) => assert!(!data.is_empty()),
        Verdict::Is(Detected::Opaque) | Verdict::NeedMore => {}
    }
}
