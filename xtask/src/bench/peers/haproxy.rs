//! HAProxy as a one-hop reference: load → HAProxy → nginx backend,
//! plaintext, one thread, keep-alive connections reused upstream; h2c with
//! prior knowledge on both sides for HTTP/2.

use super::super::loadgen::Proto;
use super::super::topology::ok_at;
use super::Running;
use crate::mesh::{STARTUP, loopback};
use crate::procs::{free_ports, spawn, wait_for};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::Path;

/// The config: one thread, HTTP mode, keep-alive on both sides with idle
/// upstream connections shared between client connections (`http-reuse
/// always`). `probe`, if any, is a second, HTTP/1.1 frontend for the
/// readiness check (an h2c frontend does not speak HTTP/1.0).
pub fn config(listen: SocketAddr, proto: Proto, probe: Option<SocketAddr>, upstream: SocketAddr) -> String {
    let h2 = if proto == Proto::Http2 { " proto h2" } else { "" };
    let probe = probe.map(|p| format!("frontend probe\n  bind {p}\n  default_backend app\n")).unwrap_or_default();
    format!(
        "global\n  nbthread 1\n  maxconn 4096\n\n\
         defaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n  timeout connect 5s\n\
         \x20 timeout client 300s\n  timeout server 300s\n  timeout http-keep-alive 300s\n\n\
         frontend entry\n  bind {listen}{h2}\n  default_backend app\n\n{probe}\n\
         backend app\n  server nginx {upstream}{h2}\n"
    )
}

/// Starts HAProxy in the foreground (`-db`) proxying `proto` to `app`;
/// ready once a request through it gets the backend's answer.
pub fn start(haproxy: &Path, proto: Proto, app: SocketAddr, dir: &Path) -> anyhow::Result<Running> {
    let ports = free_ports(2)?;
    let entry = loopback(ports[0]);
    let probe = (proto == Proto::Http2).then(|| loopback(ports[1]));
    let name = format!("haproxy-{}", proto.key());
    let conf = dir.join(format!("{name}.cfg"));
    std::fs::write(&conf, config(entry, proto, probe, app))
        .with_context(|| format!("cannot write {}", conf.display()))?;
    let c = conf.display().to_string();
    let check = std::process::Command::new(haproxy).args(["-c", "-f", &c]).output().context("cannot run haproxy -c")?;
    if !check.status.success() {
        bail!("HAProxy rejected the generated config {c}:\n{}", String::from_utf8_lossy(&check.stdout));
    }
    let proc = spawn(&name, haproxy, &["-db".into(), "-f".into(), c], &[], dir)?;
    wait_for(&name, STARTUP, &[&proc], || ok_at(probe.unwrap_or(entry)))?;
    Ok(Running::new(vec![proc], entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a config that closes upstream connections per request
    /// (no keep-alive or no reuse), runs several threads, or forgets h2 on
    /// either side of the HTTP/2 proxy.
    #[test]
    fn one_thread_keepalive_and_h2_on_both_sides() {
        let (listen, app) = (loopback(8080), loopback(9090));
        let h1 = config(listen, Proto::Http1, None, app);
        for line in ["nbthread 1", "option http-keep-alive", "http-reuse always", "bind 127.0.0.1:8080\n"] {
            assert!(h1.contains(line), "{line:?} missing:\n{h1}");
        }
        assert!(h1.contains("server nginx 127.0.0.1:9090\n") && !h1.contains("probe"), "{h1}");
        let h2 = config(listen, Proto::Http2, Some(loopback(8081)), app);
        assert!(h2.contains("bind 127.0.0.1:8080 proto h2\n"), "{h2}");
        assert!(h2.contains("server nginx 127.0.0.1:9090 proto h2\n"), "{h2}");
        assert!(h2.contains("frontend probe\n  bind 127.0.0.1:8081\n"), "{h2}");
    }
}
