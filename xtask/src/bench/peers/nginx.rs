//! nginx as a one-hop reference: load → nginx reverse proxy → nginx
//! backend, plaintext, one worker, keep-alive connections upstream; started
//! like the backend ([`launch`]).

use super::super::loadgen::Proto;
use super::super::topology::{config, launch};
use super::Running;
use crate::mesh::loopback;
use crate::procs::free_ports;
use std::net::SocketAddr;
use std::path::Path;

/// The reverse proxy's server block: `listen` speaking `proto` (h2c with
/// prior knowledge for HTTP/2) and, for HTTP/2, `probe` speaking HTTP/1.1 for
/// the readiness check, proxying to `upstream` over HTTP/1.1 with a pool of
/// keep-alive connections (nginx proxies upstream in HTTP/1.x only).
pub fn proxy_servers(listen: SocketAddr, proto: Proto, probe: Option<SocketAddr>, upstream: SocketAddr) -> String {
    let h2 = if proto == Proto::Http2 { " http2" } else { "" };
    let probe = probe.map(|p| format!("    listen {p};\n")).unwrap_or_default();
    format!(
        "  upstream backend {{\n    server {upstream};\n    keepalive 64;\n    keepalive_requests 100000000;\n  }}\n\
         \x20 server {{\n    listen {listen}{h2};\n{probe}    location / {{\n      proxy_pass http://backend;\n\
         \x20     proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n"
    )
}

/// Starts nginx proxying `proto` to the backend `app`; ready once a
/// request through it gets the backend's answer.
pub fn start(nginx: &Path, proto: Proto, app: SocketAddr, dir: &Path) -> anyhow::Result<Running> {
    let ports = free_ports(2)?;
    let entry = loopback(ports[0]);
    // The readiness probe speaks HTTP/1.0, which an h2c listener does
    // not: the HTTP/2 proxy gets a second, HTTP/1.1 listener for it.
    let probe = (proto == Proto::Http2).then(|| loopback(ports[1]));
    let name = format!("nginx-proxy-{}", proto.key());
    let text = config(dir, &name, &proxy_servers(entry, proto, probe, app));
    let proc = launch(nginx, dir, &name, &text, probe.unwrap_or(entry))?;
    Ok(Running::new(vec![proc], entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches an upstream without keep-alive (nginx's default: a new
    /// connection per request, with `Connection: close`), or an HTTP/2
    /// listener without `http2`.
    #[test]
    fn proxies_with_keepalive_upstream() {
        let (listen, app) = (loopback(8080), loopback(9090));
        let s = proxy_servers(listen, Proto::Http1, None, app);
        assert!(s.contains("server 127.0.0.1:9090;") && s.contains("keepalive 64;"), "{s}");
        assert!(s.contains("proxy_http_version 1.1;") && s.contains("proxy_set_header Connection \"\";"), "{s}");
        assert!(s.contains("listen 127.0.0.1:8080;"), "{s}");
        let h2 = proxy_servers(listen, Proto::Http2, Some(loopback(8081)), app);
        assert!(h2.contains("listen 127.0.0.1:8080 http2;\n    listen 127.0.0.1:8081;\n"), "{h2}");
        let c = config(Path::new("/tmp/x"), "p", &s);
        assert!(c.contains("master_process off;") && c.contains("worker_processes 1;") && c.ends_with("}\n}\n"), "{c}");
        assert!(c.contains("pid /tmp/x/p.pid;"), "{c}");
    }
}
