//! Tapping many proxies at once: one `/tap` stream per proxy, merged into
//! one channel. A stream that breaks (the proxy restarted) is opened again
//! with backoff; with the control plane as the source, the proxy list is
//! refreshed so proxies that start later are tapped too.

use super::client::{Addr, Lines};
use super::proxies::{Proxy, Source};
use mesh_core::backoff::Backoff;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How often the proxy list is refreshed from the control plane.
const REDISCOVER: Duration = Duration::from_secs(10);
/// How long opening a tap may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// One request as a proxy's `/tap` reports it: the wire type the proxy writes.
pub use mesh_proto::wire::TapEvent as Event;

/// The proxy-side filters of a tap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Path prefix.
    pub path: Option<String>,
    /// Method.
    pub method: Option<String>,
    /// Authority (substring).
    pub authority: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
}

impl Query {
    /// `/tap?...` for these filters.
    pub fn to_path(&self) -> String {
        let pairs: Vec<String> = [
            ("path", &self.path),
            ("method", &self.method),
            ("authority", &self.authority),
            ("direction", &self.direction),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| format!("{k}={}", encode(v))))
        .collect();
        if pairs.is_empty() { "/tap".to_string() } else { format!("/tap?{}", pairs.join("&")) }
    }
}

/// Percent-encodes a query value (unreserved characters and `/` stay).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Which workloads `--workload` selects: its exact name or every workload
/// of the service of that name.
pub fn selects(filter: Option<&str>, workload: &str) -> bool {
    filter.is_none_or(|f| workload == f || super::service_of(workload) == f)
}

/// What the taps report.
#[derive(Debug, Clone)]
pub enum Note {
    /// A request.
    Event(Event),
    /// A proxy could not be tapped (or its tap broke).
    Warning(String),
}

/// Taps that stop when dropped.
#[derive(Debug)]
pub struct Taps {
    /// Events and warnings, as they come.
    pub rx: mpsc::Receiver<Note>,
    supervisor: JoinHandle<()>,
}

impl Drop for Taps {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// Taps `proxies` (already selected with `workload`) with `query`; with
/// the control plane as `source`, proxies registering later are added.
pub fn start(source: Source, proxies: Vec<Proxy>, workload: Option<String>, query: &Query) -> Taps {
    let (tx, rx) = mpsc::channel(4096);
    let path = query.to_path();
    let supervisor = tokio::spawn(supervise(source, proxies, workload, path, tx));
    Taps { rx, supervisor }
}

async fn supervise(
    source: Source,
    mut proxies: Vec<Proxy>,
    workload: Option<String>,
    path: String,
    tx: mpsc::Sender<Note>,
) {
    let mut taps: HashMap<Addr, JoinHandle<()>> = HashMap::new();
    // Aborts every tap when the supervisor ends or is aborted.
    struct AbortAll<'a>(&'a mut HashMap<Addr, JoinHandle<()>>);
    impl Drop for AbortAll<'_> {
        fn drop(&mut self) {
            for t in self.0.values() {
                t.abort();
            }
        }
    }
    let taps = AbortAll(&mut taps);
    let refresh = source.proxies.is_empty();
    loop {
        taps.0.retain(|addr, task| {
            let keep = proxies.iter().any(|p| &p.admin == addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for p in &proxies {
            if !taps.0.contains_key(&p.admin) {
                taps.0.insert(p.admin.clone(), tokio::spawn(tap_one(p.clone(), path.clone(), tx.clone())));
            }
        }
        if !refresh {
            // Fixed proxies: their taps reconnect on their own.
            tx.closed().await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(REDISCOVER) => {}
            _ = tx.closed() => return,
        }
        match source.proxies().await {
            Ok(fresh) => proxies = fresh.into_iter().filter(|p| selects(workload.as_deref(), &p.workload)).collect(),
            Err(e) => tracing::debug!(error = %e, "cannot refresh the proxy list; keeping the last one"),
        }
    }
}

async fn tap_one(proxy: Proxy, path: String, tx: mpsc::Sender<Note>) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut warned = false;
    loop {
        let why = match Lines::open(&proxy.admin, &path, OPEN_TIMEOUT).await {
            Ok(mut lines) => loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        warned = false;
                        backoff.reset();
                        match serde_json::from_slice::<Event>(&line) {
                            // A request already in flight when the tap opened
                            // is reported without its method and path: skip it.
                            Ok(e) if e.method.is_empty() => {}
                            Ok(e) => {
                                if tx.send(Note::Event(e)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => tracing::debug!(workload = %proxy.workload, error = %e, "skipping a tap line"),
                        }
                    }
                    Ok(None) => break "the proxy ended the tap".to_string(),
                    Err(e) => break e,
                }
            },
            Err(e) => e.to_string(),
        };
        if !warned {
            warned = true;
            let note =
                Note::Warning(format!("cannot tap {} (http://{}): {why}; retrying", proxy.workload, proxy.admin));
            if tx.send(note).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded() {
        assert_eq!(Query::default().to_path(), "/tap");
        let q = Query {
            path: Some("/api/a b".into()),
            method: Some("GET".into()),
            authority: None,
            direction: Some("inbound".into()),
        };
        assert_eq!(q.to_path(), "/tap?path=/api/a%20b&method=GET&direction=inbound");
        assert_eq!(encode("a&b=c+d%"), "a%26b%3Dc%2Bd%25");
    }

    #[test]
    fn workload_filter_matches_names_and_services() {
        assert!(selects(None, "books-0"));
        assert!(selects(Some("books"), "books-0"));
        assert!(selects(Some("books-0"), "books-0"));
        assert!(!selects(Some("books-1"), "books-0"));
        assert!(!selects(Some("book"), "books-0"));
    }

    #[test]
    fn events_parse_leniently_and_classify() {
        let e: Event = serde_json::from_str(
            r#"{"ts_ms":1,"direction":"inbound","workload":"web-0","path":"/","status":503,"latency_ms":1.5,"new_field":1}"#,
        )
        .expect("parses");
        assert_eq!((e.workload.as_str(), e.status, e.tls), ("web-0", 503, false));
        assert!(!e.success());
        let ok = Event { status: 200, grpc_status: Some(5), ..Event::default() };
        assert!(ok.success(), "NOT_FOUND is the caller's problem");
        assert!(!Event { status: 200, grpc_status: Some(14), ..Event::default() }.success());
    }
}
