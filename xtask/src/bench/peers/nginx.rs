//! nginx as a one-hop reference: load → nginx reverse proxy → nginx
//! backend, plaintext, one worker, keep-alive connections upstream. Also the
//! launcher the backend shares: a config checked with `nginx -t`, then
//! nginx in the foreground as a single process.

use super::super::loadgen::Proto;
use super::Running;
use crate::mesh::{ADMIN_TIMEOUT, STARTUP, loopback};
use crate::procs::{free_ports, http_get, spawn, wait_for};
use anyhow::{Context, bail};
use mesh_process::Child;
use std::net::SocketAddr;
use std::path::Path;

/// A full nginx config for `name`: one process, in the foreground, its
/// files under `dir`, with `servers` (server blocks and upstreams) inside
/// the `http` block.
pub fn config(dir: &Path, name: &str, servers: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/{name}.pid;\n\
         error_log {d}/{name}-error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  default_type text/plain;\n  keepalive_requests 100000000;\n\
         \x20 keepalive_timeout 300s;\n  client_body_temp_path {d}/{name}-tmp-body;\n  proxy_temp_path {d}/{name}-tmp-proxy;\n\
         \x20 fastcgi_temp_path {d}/{name}-tmp-fastcgi;\n  uwsgi_temp_path {d}/{name}-tmp-uwsgi;\n  scgi_temp_path {d}/{name}-tmp-scgi;\n\
         {servers}}}\n"
    )
}

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

/// Writes `text` to `<dir>/<name>.conf`, checks it with `nginx -t` and
/// starts nginx with it, waiting until `GET /` on `probe` answers 200 `ok`.
pub fn launch(nginx: &Path, dir: &Path, name: &str, text: &str, probe: SocketAddr) -> anyhow::Result<Child> {
    let d = dir.display();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, text).with_context(|| format!("cannot write {}", conf.display()))?;
    let args = |test: bool| {
        let mut a: Vec<String> = Vec::new();
        if test {
            a.push("-t".into());
        }
        let err_log = format!("{d}/{name}-error.log");
        a.extend(["-p".into(), format!("{d}/"), "-e".into(), err_log, "-c".into(), conf.display().to_string()]);
        a
    };
    let check = std::process::Command::new(nginx).args(args(true)).output().context("cannot run nginx -t")?;
    if !check.status.success() {
        bail!("nginx rejected the generated config {}:\n{}", conf.display(), String::from_utf8_lossy(&check.stderr));
    }
    let proc = spawn(name, nginx, &args(false), &[], dir)?;
    wait_for(name, STARTUP, &[&proc], || ok_at(probe))?;
    Ok(proc)
}

/// `None` once `GET /` at `addr` answers 200 `ok` (the backend's answer).
pub fn ok_at(addr: SocketAddr) -> Option<String> {
    match http_get(addr, "/", ADMIN_TIMEOUT) {
        Ok((200, body)) if body == "ok" => None,
        Ok((status, body)) => Some(format!("GET / answered {status} {body:?}")),
        Err(e) => Some(e.to_string()),
    }
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
