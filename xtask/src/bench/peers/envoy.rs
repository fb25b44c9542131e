//! Envoy's mTLS pair, the sidecar reference: load → client Envoy → mTLS →
//! server Envoy → nginx, one worker each (`--concurrency 1`).
//!
//! Its certificates come from the same CA as our mesh's: the bench's
//! identity directory (`meshctl identity init`) holds the issuer, which
//! signs a leaf per Envoy with the openssl CLI (ECDSA P-256, SPIFFE URI
//! SANs, as our proxies' certificates). Each Envoy requires and verifies
//! the other's certificate against the trust anchors and its SPIFFE ID. The
//! bootstrap is generated as JSON (Envoy reads it like YAML).

use super::super::grpc;
use super::super::loadgen::Proto;
use super::super::topology::{CLIENT_ACCOUNT, Identity, SERVER_ACCOUNT, TRUST_DOMAIN};
use crate::mesh::{STARTUP, loopback};
use crate::procs::{command, free_ports, output_with_timeout, spawn, wait_for};
use anyhow::{Context, bail};
use mesh_process::Child;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A certificate chain and its key, in PEM files.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The leaf, then the issuer.
    pub chain: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

/// The pair's certificates and the trust anchors both check against.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The client Envoy's (SPIFFE ID of service account `client`).
    pub client: Leaf,
    /// The server Envoy's (SPIFFE ID of service account `bench`).
    pub server: Leaf,
    /// The identity directory's trust anchors.
    pub anchors: PathBuf,
}

/// The SPIFFE ID of service account `account` in namespace `default`.
pub fn spiffe_id(account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{account}")
}

/// The extensions of a workload leaf, as an openssl `-extfile`.
fn leaf_extensions(account: &str) -> String {
    format!(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=critical,URI:{}\n",
        spiffe_id(account)
    )
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let line = format!("openssl {}", args.join(" "));
    let out = output_with_timeout(command(Path::new("openssl")).args(args), Duration::from_secs(30))
        .with_context(|| format!("cannot run `{line}` (apt-get install openssl)"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Certs {
    /// Issues both leaves from `identity`'s issuer into `dir` with openssl.
    pub fn issue(identity: &Identity, dir: &Path) -> anyhow::Result<Self> {
        let issuer_cert = identity.dir.join("issuer.crt");
        let issuer_key = identity.dir.join("issuer.key");
        let leaf = |account: &str, serial: u32| -> anyhow::Result<Leaf> {
            let p = |ext: &str| dir.join(format!("envoy-{account}.{ext}"));
            let (key, csr, crt, ext) = (p("key"), p("csr"), p("crt"), p("ext"));
            std::fs::write(&ext, leaf_extensions(account))
                .with_context(|| format!("cannot write {}", ext.display()))?;
            let s = |p: &Path| p.display().to_string();
            let subject = format!("/CN={account}");
            openssl(&[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &s(&key),
                "-subj",
                &subject,
                "-out",
                &s(&csr),
            ])?;
            let serial = format!("{:#x}", u64::from(std::process::id()) << 8 | u64::from(serial));
            openssl(&[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&issuer_cert),
                "-CAkey",
                &s(&issuer_key),
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                &s(&ext),
                "-out",
                &s(&crt),
            ])?;
            let chain = p("chain.pem");
            let text = [std::fs::read_to_string(&crt)?, std::fs::read_to_string(&issuer_cert)?].concat();
            std::fs::write(&chain, text).with_context(|| format!("cannot write {}", chain.display()))?;
            Ok(Leaf { chain, key })
        };
        Ok(Self {
            client: leaf(CLIENT_ACCOUNT, 1)?,
            server: leaf(SERVER_ACCOUNT, 2)?,
            anchors: identity.anchors.clone(),
        })
    }
}

/// Which Envoy of the pair a bootstrap is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Plaintext listener for the load; mTLS to the server Envoy.
    Client,
    /// mTLS listener requiring the client Envoy's certificate; plaintext to the app.
    Server,
}

/// One Envoy's bootstrap inputs.
#[derive(Debug, Clone)]
pub struct Bootstrap<'a> {
    /// Client or server.
    pub side: Side,
    /// The protocol of the whole path.
    pub proto: Proto,
    /// Its listener.
    pub listen: SocketAddr,
    /// Where it sends requests: the server Envoy, or the app.
    pub upstream: SocketAddr,
    /// Its admin listener (readiness and stats).
    pub admin: SocketAddr,
    /// The certificates.
    pub certs: &'a Certs,
}

fn file(p: &Path) -> Value {
    json!({ "filename": p.display().to_string() })
}

fn addr(a: SocketAddr) -> Value {
    json!({ "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } })
}

impl Bootstrap<'_> {
    /// ALPN between the Envoys: the path's protocol only.
    fn alpn(&self) -> Value {
        match self.proto {
            Proto::Http1 => json!(["http/1.1"]),
            Proto::Http2 | Proto::Grpc | Proto::GrpcStream => json!(["h2"]),
        }
    }

    /// Its certificate, and validation of the peer's against the trust
    /// anchors and the peer's SPIFFE ID.
    fn tls_context(&self) -> Value {
        let (mine, peer) = match self.side {
            Side::Client => (&self.certs.client, SERVER_ACCOUNT),
            Side::Server => (&self.certs.server, CLIENT_ACCOUNT),
        };
        json!({
            "alpn_protocols": self.alpn(),
            "tls_certificates": [{ "certificate_chain": file(&mine.chain), "private_key": file(&mine.key) }],
            "validation_context": {
                "trusted_ca": file(&self.certs.anchors),
                "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": { "exact": spiffe_id(peer) } }],
            },
        })
    }

    /// The bootstrap as JSON.
    pub fn render(&self) -> Value {
        let mut hcm = json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "entry",
                "codec_type": "AUTO",
                "route_config": { "name": "all", "virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }],
                }]},
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }],
            },
        });
        if self.proto == Proto::GrpcStream {
            // A stream lasts a whole run: no route timeout (Envoy's default ends it at 15 s).
            hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"] = json!("0s");
        }
        let mut chain = json!({ "filters": [hcm] });
        if self.side == Side::Server {
            chain["transport_socket"] = json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": self.tls_context(),
            }});
        }
        let http = match self.proto {
            Proto::Http1 => json!({ "http_protocol_options": {} }),
            Proto::Http2 | Proto::Grpc | Proto::GrpcStream => json!({ "http2_protocol_options": {} }),
        };
        let mut cluster = json!({
            "name": "upstream",
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": { "cluster_name": "upstream", "endpoints": [{ "lb_endpoints": [{
                "endpoint": { "address": addr(self.upstream) } }] }] },
            "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": http,
            }},
        });
        if self.side == Side::Client {
            cluster["transport_socket"] = json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": format!("{SERVER_ACCOUNT}.default"),
                "common_tls_context": self.tls_context(),
            }});
        }
        json!({
            "admin": { "address": addr(self.admin) },
            "static_resources": {
                "listeners": [{ "name": "entry", "address": addr(self.listen), "filter_chains": [chain] }],
                "clusters": [cluster],
            },
        })
    }
}

/// TLS handshakes an Envoy counted (`*.ssl.handshake` in its `/stats`).
pub fn handshakes(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.ends_with(".ssl.handshake"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// The running pair.
#[derive(Debug)]
pub struct Pair {
    /// The client Envoy, where load is sent.
    pub client: Child,
    /// The server Envoy, beside the app.
    pub server: Child,
    /// The client Envoy's listener.
    pub entry: SocketAddr,
}

// Envoy answers HTTP/1.0 (the bench's own admin client) with 426, on its
// admin port too: its admin endpoints and the checks go through curl.

fn stats(admin: SocketAddr) -> anyhow::Result<String> {
    curl(&[&format!("http://{admin}/stats")])
}

fn live(admin: SocketAddr) -> Option<String> {
    match curl(&[&format!("http://{admin}/ready")]) {
        Ok(body) if body.trim() == "LIVE" => None,
        Ok(body) => Some(format!("/ready answered {:?}", body.trim())),
        Err(e) => Some(format!("{e:#}")),
    }
}

impl Pair {
    /// Starts both Envoys for `proto` in front of `app`, then proves the
    /// path: a request through the pair gets the app's answer over an mTLS
    /// connection both Envoys count, and the server Envoy refuses a client
    /// without a certificate.
    pub fn start(envoy: &Path, certs: &Certs, proto: Proto, app: SocketAddr, dir: &Path) -> anyhow::Result<Self> {
        if super::super::loadgen::which("curl").is_none() {
            bail!("`curl` not found, which checks Envoy's pair before measuring it: apt-get install curl");
        }
        let p = free_ports(4)?;
        let (entry, inbound, client_admin, server_admin) =
            (loopback(p[0]), loopback(p[1]), loopback(p[2]), loopback(p[3]));
        let run = |side: Side, listen, upstream, admin| -> anyhow::Result<Child> {
            let name = format!("envoy-{}-{}", if side == Side::Client { "client" } else { "server" }, proto.key());
            let conf = dir.join(format!("{name}.json"));
            let boot = Bootstrap { side, proto, listen, upstream, admin, certs };
            std::fs::write(&conf, format!("{:#}", boot.render()))
                .with_context(|| format!("cannot write {}", conf.display()))?;
            let args: Vec<String> = ["--concurrency", "1", "--disable-hot-restart", "--log-level", "warn", "-c"]
                .into_iter()
                .map(String::from)
                .chain([conf.display().to_string()])
                .collect();
            spawn(&name, envoy, &args, &[], dir)
        };
        let server = run(Side::Server, inbound, app, server_admin)?;
        let client = run(Side::Client, entry, inbound, client_admin)?;
        let all = [&server, &client];
        wait_for("the server Envoy's /ready", STARTUP, &all, || live(server_admin))?;
        wait_for("the client Envoy's /ready", STARTUP, &all, || live(client_admin))?;
        let pair = Self { client, server, entry };
        pair.prove(proto, inbound, [client_admin, server_admin], dir)
            .with_context(|| format!("Envoy's pair is not what the bench claims to measure\n{}", pair.logs()))?;
        Ok(pair)
    }

    fn logs(&self) -> String {
        [&self.client, &self.server]
            .iter()
            .map(|p| format!("--- {} log (end) ---\n{}", p.name(), p.log_tail(15)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn prove(&self, proto: Proto, inbound: SocketAddr, admins: [SocketAddr; 2], dir: &Path) -> anyhow::Result<()> {
        if proto.is_grpc() {
            // A unary call; its answer echoes the request's text.
            let body = format!("@{}", grpc::write_body(dir)?.display());
            let url = format!("http://{}{}", self.entry, grpc::UNARY_PATH);
            let [ct, te] = grpc::HEADERS;
            let answer = curl(&["--http2-prior-knowledge", "--data-binary", &body, "-H", ct, "-H", te, &url])
                .context("a gRPC call through the pair")?;
            if !answer.contains(grpc::TEXT) {
                bail!("a gRPC call through the pair got {answer:?}, not the Echo service's answer");
            }
        } else {
            let version = if proto == Proto::Http1 { "--http1.1" } else { "--http2-prior-knowledge" };
            let body = curl(&[version, &format!("http://{}/", self.entry)]).context("a request through the pair")?;
            if body != "ok" {
                bail!("a request through the pair got {body:?}, not the app's `ok`");
            }
        }
        for (side, admin) in ["client", "server"].iter().zip(admins) {
            let n = handshakes(&stats(admin)?);
            if n == 0 {
                bail!("the {side} Envoy counted no TLS handshake after a request through the pair");
            }
        }
        // Without a client certificate, the server Envoy must refuse.
        let url = format!("https://{inbound}/");
        if curl(&["--insecure", &url]).is_ok() {
            bail!("the server Envoy answered a client without a certificate: it does not require mTLS");
        }
        Ok(())
    }
}

/// `curl ARGS`: the body of a 2xx answer; an error for anything else.
fn curl(args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = command(Path::new("curl"));
    cmd.args(["-sS", "--fail", "--max-time", "5"]).args(args);
    let out =
        output_with_timeout(&mut cmd, Duration::from_secs(10)).context("cannot run curl (apt-get install curl)")?;
    if !out.status.success() {
        bail!("curl {} ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Certificate paths for configuration tests (nothing is read from them).
#[cfg(test)]
pub fn test_certs() -> Certs {
    let leaf =
        |n: &str| Leaf { chain: PathBuf::from(format!("/c/{n}.pem")), key: PathBuf::from(format!("/c/{n}.key")) };
    Certs { client: leaf("client"), server: leaf("server"), anchors: PathBuf::from("/c/anchors.pem") }
}

#[cfg(test)]
mod tests {
    use super::test_certs as certs;
    use super::*;

    fn boot(side: Side, proto: Proto, certs: &Certs) -> Value {
        let b =
            Bootstrap { side, proto, listen: loopback(1000), upstream: loopback(2000), admin: loopback(3000), certs };
        b.render()
    }

    /// Catches a server Envoy that accepts clients without a certificate,
    /// or trusts another CA or identity, or a client Envoy talking
    /// plaintext to it (no mTLS at all).
    #[test]
    fn the_pair_does_mtls_both_ways() {
        let certs = certs();
        let server = boot(Side::Server, Proto::Http1, &certs);
        let chain = &server["static_resources"]["listeners"][0]["filter_chains"][0];
        let tls = &chain["transport_socket"]["typed_config"];
        assert_eq!(tls["require_client_certificate"], json!(true));
        let ctx = &tls["common_tls_context"];
        assert_eq!(ctx["validation_context"]["trusted_ca"]["filename"], json!("/c/anchors.pem"));
        let san = &ctx["validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(san["matcher"]["exact"], json!("spiffe://bench.mesh/ns/default/sa/client"));
        assert_eq!(ctx["tls_certificates"][0]["certificate_chain"]["filename"], json!("/c/server.pem"));
        assert!(server["static_resources"]["clusters"][0].get("transport_socket").is_none(), "plaintext to the app");

        let client = boot(Side::Client, Proto::Http1, &certs);
        assert!(client["static_resources"]["listeners"][0]["filter_chains"][0].get("transport_socket").is_none());
        let up = &client["static_resources"]["clusters"][0]["transport_socket"]["typed_config"];
        assert!(up["@type"].as_str().is_some_and(|t| t.ends_with("UpstreamTlsContext")), "{up}");
        let ctx = &up["common_tls_context"];
        assert_eq!(ctx["tls_certificates"][0]["private_key"]["filename"], json!("/c/client.key"));
        let san = &ctx["validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(san["matcher"]["exact"], json!("spiffe://bench.mesh/ns/default/sa/bench"));
    }

    /// Catches the wrong addresses or an HTTP/2 path that falls back to
    /// HTTP/1.1 between the Envoys or to the app.
    #[test]
    fn addresses_and_protocols() {
        let certs = certs();
        let client = boot(Side::Client, Proto::Http2, &certs);
        let res = &client["static_resources"];
        assert_eq!(res["listeners"][0]["address"]["socket_address"]["port_value"], json!(1000));
        let cluster = &res["clusters"][0];
        let ep = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
        assert_eq!(ep["socket_address"], json!({ "address": "127.0.0.1", "port_value": 2000 }));
        let opts =
            &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert!(opts["explicit_http_config"].get("http2_protocol_options").is_some(), "{opts}");
        let alpn = &cluster["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"];
        assert_eq!(alpn, &json!(["h2"]));
        assert_eq!(client["admin"]["address"]["socket_address"]["port_value"], json!(3000));
        let h1 = boot(Side::Server, Proto::Http1, &certs);
        let opts = &h1["static_resources"]["clusters"][0]["typed_extension_protocol_options"];
        assert!(opts.to_string().contains("\"http_protocol_options\""), "{opts}");
    }

    /// Catches streaming gRPC cut at Envoy's default 15 s route timeout (a
    /// stream lasts a whole run), or h2 missing on a streaming path.
    #[test]
    fn streams_have_no_route_timeout() {
        let certs = certs();
        let route = |b: &Value| {
            b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
                ["virtual_hosts"][0]["routes"][0]["route"]
                .clone()
        };
        for side in [Side::Client, Side::Server] {
            let b = boot(side, Proto::GrpcStream, &certs);
            assert_eq!(route(&b)["timeout"], json!("0s"), "{b}");
            assert!(b.to_string().contains("http2_protocol_options"));
        }
        assert!(route(&boot(Side::Client, Proto::Grpc, &certs)).get("timeout").is_none());
    }

    /// Catches counting other stats (or none) as handshakes.
    #[test]
    fn counts_handshakes_from_stats() {
        let stats = "cluster.upstream.ssl.handshake: 3\nlistener.127.0.0.1_1000.ssl.handshake: 2\n\
                     cluster.upstream.ssl.connection_error: 9\nserver.live: 1\n";
        assert_eq!(handshakes(stats), 5);
        assert_eq!(handshakes("server.live: 1\n"), 0);
    }

    /// Catches leaves without the SPIFFE ID Envoy's peer checks, or usable as a CA.
    #[test]
    fn leaves_carry_the_spiffe_id() {
        let ext = leaf_extensions("client");
        assert!(ext.contains("URI:spiffe://bench.mesh/ns/default/sa/client\n") && ext.contains("CA:FALSE"), "{ext}");
    }
}
