//! `meshctl edges`: who talks to whom, with identities and whether each
//! edge is mTLS.
//!
//! Every proxy counts its HTTP responses (`response_total`) and accepted
//! connections (`tcp_open_total`) by direction, target, TLS and peer
//! identity. Outbound, that is what the client's proxy saw: source identity
//! (the proxy's own) → target and the server identity it verified. Inbound,
//! what the server's proxy saw: the client identity it verified (none for an
//! unmeshed client, which shows as `(unmeshed)`) → this workload. Counts are
//! since each proxy started, or over `--window`.

use super::proxies::{Proxy, Source};
use super::table::{self, Align};
use super::{By, scrape, service_of};
use crate::Output;
use crate::prom::Scrape;
use clap::Args;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Flags of `meshctl edges`.
#[derive(Debug, Clone, Args)]
pub struct EdgesArgs {
    #[command(flatten)]
    source: Source,
    /// Group proxies by workload or by service.
    #[arg(long, value_enum, default_value_t = By::Workload)]
    by: By,
    /// Count only the traffic of this window (default: since each proxy started).
    #[arg(long, value_parser = super::parse_window)]
    window: Option<Duration>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

/// One proxy's counters for one peer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The target label (the service outbound, the app port inbound).
    pub target: String,
    /// The peer's identity (empty without mTLS).
    pub peer_id: String,
    /// Whether it was mTLS.
    pub tls: bool,
}

/// Requests and connections on a link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// HTTP responses.
    pub requests: f64,
    /// Connections accepted.
    pub connections: f64,
}

/// The links in one scrape.
pub fn links(scrape: &Scrape) -> BTreeMap<Link, Traffic> {
    let mut out: BTreeMap<Link, Traffic> = BTreeMap::new();
    for (name, requests) in [("response_total", true), ("tcp_open_total", false)] {
        for s in scrape.named(name) {
            let (Some(direction), Some(target)) = (s.label("direction"), s.label("target")) else { continue };
            let link = Link {
                direction: direction.to_string(),
                target: target.to_string(),
                peer_id: s.label("peer_id").unwrap_or_default().to_string(),
                tls: s.label("tls") == Some("true"),
            };
            let t = out.entry(link).or_default();
            if requests {
                t.requests += s.value;
            } else {
                t.connections += s.value;
            }
        }
    }
    out
}

/// The traffic between two scrapes of one proxy (a counter that went down
/// means the proxy restarted: everything later is new).
pub fn since(later: &BTreeMap<Link, Traffic>, earlier: &BTreeMap<Link, Traffic>) -> BTreeMap<Link, Traffic> {
    let reset = earlier.iter().any(|(k, e)| {
        let l = later.get(k).copied().unwrap_or_default();
        l.requests < e.requests || l.connections < e.connections
    });
    later
        .iter()
        .map(|(k, l)| {
            let e = if reset { Traffic::default() } else { earlier.get(k).copied().unwrap_or_default() };
            (k.clone(), Traffic { requests: l.requests - e.requests, connections: l.connections - e.connections })
        })
        .collect()
}

/// One edge of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    /// `outbound`: counted by the client's proxy; `inbound`: by the server's.
    pub seen_by: &'static str,
    /// The client: a workload or service (`(unmeshed)` when the server saw
    /// no client identity, `(unknown)` for an identity no proxy holds).
    pub src: String,
    /// The client's identity.
    pub src_identity: Option<String>,
    /// The server: the target called (outbound) or the workload or service
    /// that was called (inbound).
    pub dst: String,
    /// The server's identity.
    pub dst_identity: Option<String>,
    /// HTTP requests.
    pub requests: u64,
    /// Connections the proxy accepted (the app's outbound, the peer's inbound).
    pub connections: u64,
    /// Requests per second (with `--window`).
    pub requests_per_second: Option<f64>,
    /// Whether the traffic was mutually authenticated TLS.
    pub mtls: bool,
}

/// Edges from each proxy's links, grouped `by` workload or service.
pub fn edges(by: By, measured: &[(Proxy, BTreeMap<Link, Traffic>)], window: Option<Duration>) -> Vec<Edge> {
    // Which services hold an identity: a server sees identities, not replicas.
    let mut owners: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for (p, _) in measured {
        if let Some(id) = &p.identity {
            owners.entry(id.as_str()).or_default().insert(service_of(&p.workload));
        }
    }
    type Key = (&'static str, String, Option<String>, String, Option<String>, bool);
    let mut sum: BTreeMap<Key, Traffic> = BTreeMap::new();
    for (p, links) in measured {
        let me = by.key(&p.workload);
        for (link, t) in links {
            if t.requests <= 0.0 && t.connections <= 0.0 {
                continue;
            }
            let peer = Some(link.peer_id.clone()).filter(|i| !i.is_empty());
            let key: Key = match link.direction.as_str() {
                "outbound" => ("outbound", me.clone(), p.identity.clone(), link.target.clone(), peer, link.tls),
                "inbound" => {
                    let src = match &peer {
                        None => "(unmeshed)".to_string(),
                        Some(id) => owners.get(id.as_str()).map_or_else(
                            || "(unknown)".to_string(),
                            |o| o.iter().copied().collect::<Vec<_>>().join(","),
                        ),
                    };
                    ("inbound", src, peer, me.clone(), p.identity.clone(), link.tls)
                }
                _ => continue,
            };
            let e = sum.entry(key).or_default();
            e.requests += t.requests;
            e.connections += t.connections;
        }
    }
    let secs = window.map(|w| w.as_secs_f64()).filter(|s| *s > 0.0);
    sum.into_iter()
        .map(|((seen_by, src, src_identity, dst, dst_identity, tls), t)| Edge {
            seen_by,
            src,
            src_identity,
            dst,
            dst_identity,
            requests: t.requests.max(0.0).round() as u64,
            connections: t.connections.max(0.0).round() as u64,
            requests_per_second: secs.map(|s| (t.requests / s * 1000.0).round() / 1000.0),
            mtls: tls,
        })
        .collect()
}

/// The tables for people: outbound edges, then inbound ones.
pub fn render(edges: &[Edge], window: Option<Duration>) -> String {
    let period =
        window.map_or_else(|| "since each proxy started".to_string(), |w| format!("over {:.1}s", w.as_secs_f64()));
    let headers = [
        ("SRC", Align::Left),
        ("DST", Align::Left),
        ("SRC IDENTITY", Align::Left),
        ("DST IDENTITY", Align::Left),
        ("REQUESTS", Align::Right),
        ("CONNS", Align::Right),
        ("MTLS", Align::Left),
    ];
    let mut out = String::new();
    for (seen_by, title) in [
        ("outbound", format!("edges as the clients' proxies saw them (outbound), {period}")),
        ("inbound", format!("edges as the servers' proxies saw them (inbound), {period}")),
    ] {
        let rows: Vec<Vec<String>> = edges
            .iter()
            .filter(|e| e.seen_by == seen_by)
            .map(|e| {
                vec![
                    e.src.clone(),
                    e.dst.clone(),
                    table::or_dash(e.src_identity.as_deref()),
                    table::or_dash(e.dst_identity.as_deref()),
                    e.requests.to_string(),
                    e.connections.to_string(),
                    if e.mtls { "yes" } else { "no" }.to_string(),
                ]
            })
            .collect();
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&title);
        out.push('\n');
        if rows.is_empty() {
            out.push_str("(no traffic)\n");
        } else {
            out.push_str(&table::render(&headers, &rows));
        }
    }
    out
}

pub async fn run(args: EdgesArgs) -> anyhow::Result<()> {
    let proxies = args.source.proxies().await?;
    let measured: Vec<(Proxy, BTreeMap<Link, Traffic>)> = match args.window {
        Some(w) => scrape::twice(&proxies, w)
            .await?
            .into_iter()
            .zip(&proxies)
            .filter_map(|(pair, p)| match pair {
                (Some(a), Some(b)) => Some((p.clone(), since(&links(&b.scrape), &links(&a.scrape)))),
                _ => None,
            })
            .collect(),
        None => {
            let all = scrape::all(&proxies).await;
            if all.iter().all(Result::is_err) {
                let why: Vec<String> =
                    all.iter().filter_map(|r| r.as_ref().err()).map(|e| format!("  - {e}")).collect();
                anyhow::bail!("no proxy answered:\n{}", why.join("\n"));
            }
            all.into_iter().zip(&proxies).filter_map(|(r, p)| r.ok().map(|t| (p.clone(), links(&t.scrape)))).collect()
        }
    };
    let missing: Vec<&str> = proxies
        .iter()
        .filter(|p| !measured.iter().any(|(m, _)| m.admin == p.admin))
        .map(|p| p.workload.as_str())
        .collect();
    let all = edges(args.by, &measured, args.window);
    match args.output {
        Output::Human => print!("{}", render(&all, args.window)),
        Output::Json => {
            let doc = serde_json::json!({
                "by": args.by,
                "window_seconds": args.window.map(|w| w.as_secs_f64()),
                "edges": all,
            });
            println!("{doc}");
        }
    }
    if !missing.is_empty() {
        eprintln!("warning: these proxies did not answer: {}", missing.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::client::Addr;
    use crate::prom::parse;

    const WEB: &str = "spiffe://demo.mesh/ns/default/sa/web";
    const BOOKS: &str = "spiffe://demo.mesh/ns/default/sa/books";

    fn proxy(workload: &str, identity: Option<&str>, port: u16) -> Proxy {
        Proxy {
            workload: workload.into(),
            identity: identity.map(String::from),
            admin: Addr { host: "h".into(), port },
        }
    }

    fn web_metrics(n: u32) -> String {
        format!(
            "response_total{{direction=\"outbound\",target=\"books.default:7001\",tls=\"true\",peer_id=\"{BOOKS}\",status_code=\"200\",grpc_status=\"\",route=\"\",classification=\"success\"}} {n}\n\
             response_total{{direction=\"outbound\",target=\"books.default:7001\",tls=\"true\",peer_id=\"{BOOKS}\",status_code=\"500\",grpc_status=\"\",route=\"\",classification=\"failure\"}} 1\n\
             tcp_open_total{{direction=\"outbound\",target=\"books.default:7001\",tls=\"true\",peer_id=\"{BOOKS}\"}} 2\n\
             response_total{{direction=\"inbound\",target=\"127.0.0.1:1\",tls=\"false\",peer_id=\"\",status_code=\"200\",grpc_status=\"\",route=\"\",classification=\"success\"}} 0\n"
        )
    }

    fn books_metrics(n: u32) -> String {
        format!(
            "response_total{{direction=\"inbound\",target=\"127.0.0.1:2\",tls=\"true\",peer_id=\"{WEB}\",status_code=\"200\",grpc_status=\"\",route=\"\",classification=\"success\"}} {n}\n\
             response_total{{direction=\"inbound\",target=\"127.0.0.1:2\",tls=\"false\",peer_id=\"\",status_code=\"200\",grpc_status=\"\",route=\"\",classification=\"success\"}} 3\n\
             response_total{{direction=\"inbound\",target=\"127.0.0.1:2\",tls=\"true\",peer_id=\"spiffe://demo.mesh/ns/x/sa/y\",status_code=\"200\",grpc_status=\"\",route=\"\",classification=\"success\"}} 1\n"
        )
    }

    fn links_of(text: &str) -> BTreeMap<Link, Traffic> {
        links(&parse(text).expect("parses"))
    }

    #[test]
    fn links_add_statuses_and_count_connections() {
        let l = links_of(&web_metrics(10));
        let books = Link {
            direction: "outbound".into(),
            target: "books.default:7001".into(),
            peer_id: BOOKS.into(),
            tls: true,
        };
        assert_eq!(l.get(&books), Some(&Traffic { requests: 11.0, connections: 2.0 }));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn both_sides_of_every_edge() {
        let measured = [
            (proxy("web-0", Some(WEB), 1), links_of(&web_metrics(10))),
            (proxy("web-1", Some(WEB), 2), links_of(&web_metrics(20))),
            (proxy("books-0", Some(BOOKS), 3), links_of(&books_metrics(30))),
        ];
        let all = edges(By::Service, &measured, None);
        let out: Vec<&Edge> = all.iter().filter(|e| e.seen_by == "outbound").collect();
        assert_eq!(out.len(), 1, "{all:#?}");
        assert_eq!((out[0].src.as_str(), out[0].dst.as_str()), ("web", "books.default:7001"));
        assert_eq!((out[0].src_identity.as_deref(), out[0].dst_identity.as_deref()), (Some(WEB), Some(BOOKS)));
        assert_eq!((out[0].requests, out[0].connections, out[0].mtls), (32, 4, true));
        let inbound: Vec<(&str, &str, u64, bool)> = all
            .iter()
            .filter(|e| e.seen_by == "inbound")
            .map(|e| (e.src.as_str(), e.dst.as_str(), e.requests, e.mtls))
            .collect();
        assert_eq!(
            inbound,
            [("(unknown)", "books", 1, true), ("(unmeshed)", "books", 3, false), ("web", "books", 30, true)]
        );
        assert!(all.iter().all(|e| e.requests_per_second.is_none()));
        let per_workload = edges(By::Workload, &measured, Some(Duration::from_secs(2)));
        let srcs: Vec<&str> = per_workload.iter().filter(|e| e.seen_by == "outbound").map(|e| e.src.as_str()).collect();
        assert_eq!(srcs, ["web-0", "web-1"]);
        assert_eq!(per_workload.iter().find(|e| e.src == "web-0").and_then(|e| e.requests_per_second), Some(5.5));
        let text = render(&all, None);
        assert!(
            text.contains("edges as the clients' proxies saw them (outbound), since each proxy started\nSRC"),
            "{text}"
        );
        assert!(text.contains(&format!("web   books.default:7001   {WEB}   {BOOKS}")), "{text}");
    }

    #[test]
    fn windows_subtract_and_survive_restarts() {
        let d = since(&links_of(&books_metrics(50)), &links_of(&books_metrics(30)));
        let web = Link { direction: "inbound".into(), target: "127.0.0.1:2".into(), peer_id: WEB.into(), tls: true };
        assert_eq!(d.get(&web).map(|t| t.requests), Some(20.0));
        assert_eq!(d.values().map(|t| t.requests).sum::<f64>(), 20.0, "quiet links count zero");
        let restarted = since(&links_of(&books_metrics(5)), &links_of(&books_metrics(30)));
        assert_eq!(restarted.get(&web).map(|t| t.requests), Some(5.0));
        let text = render(&[], Some(Duration::from_secs(3)));
        assert!(text.contains("over 3.0s\n(no traffic)"), "{text}");
    }
}
