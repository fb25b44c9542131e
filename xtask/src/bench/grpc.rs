//! gRPC through the paths of the `http` scenario: the backend is the test
//! app's Echo service (`mesh-test-app grpc-server`, tonic: real gRPC with
//! `grpc-status` trailers), load is unary `Echo/Unary` calls sent by h2load
//! or oha as HTTP/2 POSTs of one length-prefixed message, and every path is
//! first checked with a bidirectional stream (`mesh-test-app grpc-client`),
//! which fails on any non-OK `grpc-status` or a wrong echo.

use crate::mesh::STARTUP;
use crate::procs::{free_ports, output_with_timeout, spawn, wait_for};
use anyhow::{Context, bail};
use mesh_process::Child;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The unary method the load calls.
pub const UNARY_PATH: &str = "/mesh.test.v1.Echo/Unary";
/// The text of each request's message (the server echoes it).
pub const TEXT: &str = "bench";

/// `Msg { text }` (field 1, a string) in the gRPC wire format: a 0 byte
/// (not compressed), the message's length as 4 big-endian bytes, the
/// protobuf bytes. `text` must be shorter than 128 bytes (one-byte lengths).
pub fn unary_body(text: &str) -> Vec<u8> {
    assert!(text.len() < 128, "unary_body: {text:?} needs a multi-byte protobuf length");
    let mut msg = vec![0x0a, text.len() as u8];
    msg.extend_from_slice(text.as_bytes());
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend(msg);
    out
}

/// The headers every gRPC request carries, as `name: value`.
pub const HEADERS: [&str; 2] = ["content-type: application/grpc", "te: trailers"];

/// Writes the request body into `dir` once; its path.
pub fn write_body(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("grpc-unary.bin");
    std::fs::write(&path, unary_body(TEXT)).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Arguments that turn an h2load or oha command line into unary gRPC calls
/// (a POST of `body` with the gRPC headers): h2load takes the body with
/// `-d`, oha with `-D` and needs the method.
pub fn load_args(tool: &str, body: &Path) -> Vec<String> {
    let mut a: Vec<String> = match tool {
        "oha" => vec!["-m".into(), "POST".into(), "-D".into(), body.display().to_string()],
        _ => vec!["-d".into(), body.display().to_string()],
    };
    for h in HEADERS {
        a.extend(["-H".into(), h.into()]);
    }
    a
}

/// The test app's gRPC Echo server, the backend of the gRPC table.
#[derive(Debug)]
pub struct GrpcApp {
    proc: Child,
    /// Its listener (h2c).
    pub addr: SocketAddr,
}

impl GrpcApp {
    /// Starts `mesh-test-app grpc-server` and waits until it accepts connections.
    pub fn start(test_app: &Path, dir: &Path) -> anyhow::Result<Self> {
        let addr = crate::mesh::loopback(free_ports(1)?[0]);
        let args = ["grpc-server".to_string(), "--listen".into(), addr.to_string(), "--name".into(), "bench".into()];
        let proc = spawn("grpc-server", test_app, &args, &[], dir)?;
        wait_for("the gRPC backend", STARTUP, &[&proc], || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).err().map(|e| e.to_string())
        })?;
        Ok(Self { proc, addr })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// Checks gRPC through `addr` (from inside network namespace `netns` when
/// given): a bidirectional stream of 3 messages, each echoed with its
/// `grpc-status` OK (`mesh-test-app grpc-client`).
pub fn check(test_app: &Path, addr: SocketAddr, what: &str, netns: Option<&str>) -> anyhow::Result<()> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = crate::procs::command(Path::new("ip"));
            c.args(["netns", "exec", ns]).arg(test_app);
            c
        }
        None => crate::procs::command(test_app),
    };
    cmd.args(["grpc-client", "--target", &format!("http://{addr}"), "--messages", "3"]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(20))
        .with_context(|| format!("cannot run the gRPC check through the {what}"))?;
    if !out.status.success() {
        bail!(
            "a gRPC stream through the {what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a frame the server cannot decode: a missing compression
    /// byte, a little-endian or wrong length, or the wrong protobuf tag.
    #[test]
    fn unary_body_is_a_length_prefixed_msg() {
        assert_eq!(unary_body("bench"), [0, 0, 0, 0, 7, 0x0a, 5, b'b', b'e', b'n', b'c', b'h']);
        assert_eq!(unary_body(""), [0, 0, 0, 0, 2, 0x0a, 0]);
    }

    /// Catches a load that is not gRPC: no body (a GET), oha without POST,
    /// or without the content type and `te: trailers` a server requires.
    #[test]
    fn load_args_post_the_body_with_grpc_headers() {
        let body = Path::new("/b.bin");
        let h2 = load_args("h2load", body);
        assert_eq!(h2[..2], ["-d", "/b.bin"]);
        assert!(h2.windows(2).any(|w| w == ["-H", "content-type: application/grpc"]), "{h2:?}");
        assert!(h2.windows(2).any(|w| w == ["-H", "te: trailers"]), "{h2:?}");
        let oha = load_args("oha", body);
        assert_eq!(oha[..4], ["-m", "POST", "-D", "/b.bin"]);
    }
}
