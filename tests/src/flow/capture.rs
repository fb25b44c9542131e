//! tcpdump on the node's bridge, and what it saw between pods: TLS or not.

use crate::pcap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// tcpdump on the node's bridge.
pub struct Capture {
    child: std::process::Child,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing TCP on the bridge into `file`, once tcpdump listens.
    pub fn start(file: &Path) -> Self {
        let child = std::process::Command::new("tcpdump")
            // Immediate mode: each packet as it comes (buffered, the last
            // ones could still sit in the kernel when tcpdump is stopped).
            .args(["-i", "cbr0", "--immediate-mode", "-U", "-s", "0", "-w"])
            .arg(file)
            .arg("tcp")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump runs");
        // Listening once it has written the file's header.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) < 24 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Capture { child, file: file.to_path_buf() }
    }

    /// Stops once tcpdump has written what it saw; the parsed capture.
    pub fn stop(mut self) -> pcap::Capture {
        // SIGTERM drops what tcpdump has not read yet (on a busy machine it
        // lags): wait until the file stops growing.
        let size = |f: &Path| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = size(&self.file);
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = size(&self.file);
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        pcap::parse(&std::fs::read(&self.file).expect("the capture")).expect("a pcap file")
    }
}

/// Between two pods (not the node, 10.244.0.1, nor the unmeshed client
/// `outside`, whose plaintext attempt is expected): how many streams to a
/// books pod carried TLS application data, and every stream with a payload
/// that is not TLS.
pub fn pod_to_pod(cap: &pcap::Capture, books: &[String], outside: &str) -> (usize, Vec<(String, String, String)>) {
    let node: std::net::IpAddr = [10, 244, 0, 1].into();
    let mut tls = 0;
    let mut plain = Vec::new();
    for ((from, to), stream) in pcap::streams(cap) {
        let unmeshed = from.ip().to_string() == outside || to.ip().to_string() == outside;
        if from.ip() == node || to.ip() == node || unmeshed || stream.data.is_empty() {
            continue;
        }
        // Up to the first hole only: tcpdump on a loaded machine misses
        // packets (seen: "not a TLS record at offset 3526" in a TLS stream),
        // and a plaintext stream is plaintext from its first byte.
        match pcap::tls_records(&stream.data[..stream.contiguous]) {
            Ok(types) => {
                if books.contains(&to.ip().to_string()) && types.contains(&pcap::content::APPLICATION_DATA) {
                    tls += 1;
                }
            }
            Err(e) => {
                let head = String::from_utf8_lossy(&stream.data[..stream.data.len().min(80)]).into_owned();
                plain.push((format!("{from} → {to}"), e, head));
            }
        }
    }
    (tls, plain)
}
