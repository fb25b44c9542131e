//! Just enough of a packet-capture reader to inspect what crossed a bridge:
//! pcap files (as `tcpdump -w` writes them) of Ethernet frames carrying
//! TCP over IPv4 or IPv6, reassembled into per-direction byte streams, and a check that
//! a stream is nothing but TLS records.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One captured TCP segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Sequence number of the first payload byte (of the SYN itself for a SYN).
    pub seq: u32,
    /// Whether SYN is set.
    pub syn: bool,
    /// The TCP payload.
    pub payload: Vec<u8>,
}

/// A pcap file's TCP segments (IPv4 and IPv6); frames of other kinds are counted.
#[derive(Debug, Default)]
pub struct Capture {
    /// Every frame in the file.
    pub frames: usize,
    /// The TCP ones.
    pub segments: Vec<Segment>,
}

fn u16_be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a pcap file (either byte order, micro- or nanosecond stamps) of
/// Ethernet frames.
pub fn parse(file: &[u8]) -> Result<Capture, String> {
    let header = file.get(..24).ok_or("the capture is shorter than a pcap header (tcpdump wrote nothing)")?;
    let magic = [header[0], header[1], header[2], header[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(format!("not a pcap file (magic {magic:02x?})")),
    };
    let read_u32 = |b: &[u8], at: usize| -> Option<u32> {
        let raw: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if little { u32::from_le_bytes(raw) } else { u32::from_be_bytes(raw) })
    };
    let link = read_u32(header, 20).ok_or("truncated pcap header")?;
    if link != 1 {
        return Err(format!("link type {link} is not Ethernet"));
    }
    let mut cap = Capture::default();
    let mut at = 24;
    while at + 16 <= file.len() {
        let incl = read_u32(file, at + 8).ok_or("truncated record header")? as usize;
        let start = at + 16;
        let Some(frame) = file.get(start..start + incl) else {
            // tcpdump was stopped mid-write: the last record is partial.
            break;
        };
        at = start + incl;
        cap.frames += 1;
        if let Some(seg) = tcp_segment(frame) {
            cap.segments.push(seg);
        }
    }
    Ok(cap)
}

fn tcp_segment(frame: &[u8]) -> Option<Segment> {
    let mut ethertype = u16_be(frame, 12)?;
    let mut ip_at = 14;
    if ethertype == 0x8100 {
        ethertype = u16_be(frame, 16)?;
        ip_at = 18;
    }
    let ip = frame.get(ip_at..)?;
    let (src_ip, dst_ip, tcp): (IpAddr, IpAddr, &[u8]) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16_be(ip, 2)?);
            if *ip.get(9)? != 6 || total < ihl || ip.len() < total {
                return None;
            }
            let src = Ipv4Addr::from(u32_be(ip, 12)?);
            let dst = Ipv4Addr::from(u32_be(ip, 16)?);
            (src.into(), dst.into(), ip.get(ihl..total)?)
        }
        // IPv6 with TCP as the next header (no extension headers: the lab sends none).
        0x86dd => {
            let payload = usize::from(u16_be(ip, 4)?);
            if *ip.get(6)? != 6 || ip.len() < 40 + payload {
                return None;
            }
            let addr = |at: usize| -> Option<Ipv6Addr> {
                let raw: [u8; 16] = ip.get(at..at + 16)?.try_into().ok()?;
                Some(Ipv6Addr::from(raw))
            };
            (addr(8)?.into(), addr(24)?.into(), ip.get(40..40 + payload)?)
        }
        _ => return None,
    };
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    Some(Segment {
        src: SocketAddr::new(src_ip, u16_be(tcp, 0)?),
        dst: SocketAddr::new(dst_ip, u16_be(tcp, 2)?),
        seq: u32_be(tcp, 4)?,
        syn: flags & 0x02 != 0,
        payload: tcp.get(offset..)?.to_vec(),
    })
}

/// One direction of a TCP connection, reassembled by sequence number.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    /// The bytes, in order, each once.
    pub data: Vec<u8>,
    /// Holes (bytes the capture missed); the data after a hole is appended anyway.
    pub holes: usize,
    /// How many bytes of `data` come before the first hole (all of it
    /// without holes): past a hole, record boundaries cannot be trusted.
    pub contiguous: usize,
    /// Whether the capture saw the SYN.
    pub saw_syn: bool,
}

/// Reassembles every direction of every connection in the capture,
/// keyed by (sender, receiver). Retransmitted bytes appear once.
pub fn streams(cap: &Capture) -> BTreeMap<(SocketAddr, SocketAddr), Stream> {
    let mut by_flow: BTreeMap<(SocketAddr, SocketAddr), Vec<&Segment>> = BTreeMap::new();
    for s in &cap.segments {
        by_flow.entry((s.src, s.dst)).or_default().push(s);
    }
    let mut out = BTreeMap::new();
    for (flow, segs) in by_flow {
        let syn = segs.iter().find(|s| s.syn);
        // The first data byte follows the SYN; without one, start at the lowest sequence seen.
        let base = match syn {
            Some(s) => s.seq.wrapping_add(1),
            None => segs.iter().filter(|s| !s.payload.is_empty()).map(|s| s.seq).next().unwrap_or(0),
        };
        let mut data_segs: Vec<(u32, &[u8])> = segs
            .iter()
            .filter(|s| !s.payload.is_empty())
            .map(|s| (s.seq.wrapping_sub(base), s.payload.as_slice()))
            // Sequence numbers "before" the base (by wrapping) are stale retransmissions.
            .filter(|(rel, _)| *rel < 1 << 31)
            .collect();
        data_segs.sort_by_key(|(rel, _)| *rel);
        let mut stream = Stream { saw_syn: syn.is_some(), ..Stream::default() };
        for (rel, payload) in data_segs {
            let rel = rel as usize;
            let have = stream.data.len();
            if rel > have {
                if stream.holes == 0 {
                    stream.contiguous = have;
                }
                stream.holes += 1;
                stream.data.extend_from_slice(payload);
            } else if rel + payload.len() > have {
                stream.data.extend_from_slice(&payload[have - rel..]);
            }
        }
        if stream.holes == 0 {
            stream.contiguous = stream.data.len();
        }
        out.insert(flow, stream);
    }
    out
}

/// Content types of TLS records.
pub mod content {
    /// change_cipher_spec
    pub const CHANGE_CIPHER_SPEC: u8 = 20;
    /// alert
    pub const ALERT: u8 = 21;
    /// handshake
    pub const HANDSHAKE: u8 = 22;
    /// application_data
    pub const APPLICATION_DATA: u8 = 23;
}

/// Walks `data` as a sequence of TLS records and returns their content
/// types; an error names the offset where the bytes stop being TLS. A
/// last record cut short (the capture ended) is accepted.
pub fn tls_records(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut types = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let Some(h) = data.get(at..at + 5) else {
            break;
        };
        let (kind, major, minor) = (h[0], h[1], h[2]);
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if !(content::CHANGE_CIPHER_SPEC..=content::APPLICATION_DATA).contains(&kind)
            || major != 3
            || minor > 4
            || len > (1 << 14) + 256
        {
            let end = (at + 16).min(data.len());
            return Err(format!("not a TLS record at offset {at}: {:02x?}", &data[at..end]));
        }
        types.push(kind);
        at += 5 + len;
    }
    Ok(types)
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (20 + 20 + payload.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, 6, 0, 0]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0x50, if syn { 0x02 } else { 0x18 }, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        // Ethernet padding past the IP packet must be ignored.
        f.extend_from_slice(&[0xee; 4]);
        f
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [0xa1b2c3d4u32, 0x0004_0002, 0, 0, 262_144, 1] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.truncate(24);
        for f in frames {
            for v in [0u32, 0, f.len() as u32, f.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn reassembles_out_of_order_and_retransmitted_segments() {
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let file = pcap(&[
            frame(a, b, 1000, 80, 99, true, b""),
            frame(a, b, 1000, 80, 105, false, b"world"),
            frame(a, b, 1000, 80, 100, false, b"hello"),
            frame(a, b, 1000, 80, 100, false, b"hello"),
            frame(b, a, 80, 1000, 7, false, b"ok"),
        ]);
        let cap = parse(&file).unwrap();
        assert_eq!(cap.frames, 5);
        let s = streams(&cap);
        let fwd = &s[&("10.0.0.1:1000".parse().unwrap(), "10.0.0.2:80".parse().unwrap())];
        assert_eq!(fwd.data, b"helloworld");
        assert_eq!(fwd.holes, 0);
        let back = &s[&("10.0.0.2:80".parse().unwrap(), "10.0.0.1:1000".parse().unwrap())];
        assert_eq!(back.data, b"ok");
        assert_eq!((fwd.contiguous, back.contiguous), (10, 2));
    }

    /// Catches a hole not marked (the TLS check would read across it and
    /// call a TLS stream with a missed packet plaintext) and a marker at the
    /// wrong place (a plaintext stream must still be judged from byte 0).
    #[test]
    fn the_bytes_before_the_first_hole_are_contiguous() {
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let file = pcap(&[
            frame(a, b, 1000, 80, 99, true, b""),
            frame(a, b, 1000, 80, 100, false, b"abc"),
            frame(a, b, 1000, 80, 110, false, b"xyz"),
            frame(a, b, 1000, 80, 120, false, b"123"),
        ]);
        let s = streams(&parse(&file).unwrap());
        let fwd = &s[&("10.0.0.1:1000".parse().unwrap(), "10.0.0.2:80".parse().unwrap())];
        assert_eq!((fwd.data.as_slice(), fwd.holes, fwd.contiguous), (&b"abcxyz123"[..], 2, 3));
    }

    /// Catches a reader that drops IPv6 frames: the dual-stack e2e test's
    /// TLS-only check would then pass on an empty IPv6 capture.
    #[test]
    fn reads_tcp_over_ipv6() {
        let v4 = frame([10, 0, 0, 1], [10, 0, 0, 2], 1000, 80, 99, true, b"");
        // The same TCP segment (with payload) in an IPv6 packet.
        let tcp = &frame([0; 4], [0; 4], 1000, 80, 100, false, b"v6-data")[34..34 + 20 + 7];
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        let (src, dst): (Ipv6Addr, Ipv6Addr) = ("fd00:77::10".parse().unwrap(), "fd00:77::11".parse().unwrap());
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(tcp);
        let cap = parse(&pcap(&[v4, f])).unwrap();
        assert_eq!(cap.segments.len(), 2);
        let seg = &cap.segments[1];
        assert_eq!((seg.src, seg.dst), ("[fd00:77::10]:1000".parse().unwrap(), "[fd00:77::11]:80".parse().unwrap()));
        assert_eq!(seg.payload, b"v6-data");
    }

    #[test]
    fn tells_tls_from_plaintext() {
        let mut tls = vec![22, 3, 1, 0, 2, 1, 2, 23, 3, 3, 0, 1, 9];
        assert_eq!(tls_records(&tls).unwrap(), vec![22, 23]);
        tls.extend_from_slice(&[23, 3, 3, 0, 50, 1]); // cut short by the end of the capture
        assert_eq!(tls_records(&tls).unwrap(), vec![22, 23, 23]);
        assert!(tls_records(b"GET / HTTP/1.1\r\n").is_err());
        assert!(tls_records(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_err());
        assert!(contains(b"xxHTTP/1.1yy", b"HTTP/1.1"));
        assert!(!contains(b"xx", b""));
    }
}
