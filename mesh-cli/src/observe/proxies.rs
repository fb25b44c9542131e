//! Finding the proxies: from the control plane's `/proxies` (every proxy
//! registers itself there) or from `--proxy` addresses given directly.

use super::client::{self, Addr};
use anyhow::{Context as _, bail};
use clap::Args;
use mesh_proto::wire::RegisteredProxy;
use serde::Deserialize as _;
use std::time::Duration;

/// How long a discovery request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The control plane's default admin address.
const DEFAULT_CONTROL_PLANE_ADMIN: &str = "http://127.0.0.1:9990";

/// Where the proxies are found.
#[derive(Debug, Clone, Args)]
pub struct Source {
    /// The control plane's admin URL; its /proxies lists every registered proxy.
    #[arg(long, value_name = "URL", env = "MESH_CONTROL_PLANE_ADMIN", default_value = DEFAULT_CONTROL_PLANE_ADMIN)]
    pub control_plane_admin: String,
    /// A proxy's admin address (host:port), instead of asking the control
    /// plane; repeat for more proxies.
    #[arg(long = "proxy", value_name = "ADDR")]
    pub proxies: Vec<String>,
}

/// One proxy to observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Its workload's name.
    pub workload: String,
    /// Its SPIFFE identity, if known.
    pub identity: Option<String>,
    /// Its admin address.
    pub admin: Addr,
}

impl Source {
    /// Every proxy, sorted by workload then address. With `--proxy`, each
    /// proxy's `/config` names its workload (a proxy that does not answer
    /// is kept under its address, so it shows as down).
    pub async fn proxies(&self) -> anyhow::Result<Vec<Proxy>> {
        let mut all = if self.proxies.is_empty() { self.registered().await? } else { self.named().await? };
        all.sort_by(|a, b| (&a.workload, &a.admin).cmp(&(&b.workload, &b.admin)));
        all.dedup_by(|a, b| a.admin == b.admin);
        Ok(all)
    }

    async fn registered(&self) -> anyhow::Result<Vec<Proxy>> {
        let cp = Addr::parse(&self.control_plane_admin).map_err(anyhow::Error::msg)?;
        let doc = client::get_json(&cp, "/proxies", TIMEOUT).await.map_err(anyhow::Error::msg).with_context(|| {
            format!(
                "cannot list the proxies from the control plane's admin port at http://{cp}/proxies; \
                 give --control-plane-admin URL (or --proxy ADDR for each proxy)"
            )
        })?;
        let all = parse_registered(&doc).with_context(|| format!("http://{cp}/proxies"))?;
        if all.is_empty() {
            bail!("no proxy is registered with the control plane at http://{cp} (proxies register when they start)");
        }
        Ok(all)
    }

    async fn named(&self) -> anyhow::Result<Vec<Proxy>> {
        let addrs: Vec<Addr> =
            self.proxies.iter().map(|p| Addr::parse(p)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
        let configs = super::join_all(
            addrs.iter().cloned().map(|a| async move { client::get_json(&a, "/config", TIMEOUT).await }),
        )
        .await;
        Ok(addrs
            .into_iter()
            .zip(configs)
            .map(|(admin, config)| match config.unwrap_or_else(|| Err("the request failed".to_string())) {
                Ok(c) => {
                    let (workload, identity) = describe(&c);
                    Proxy { workload: workload.unwrap_or_else(|| admin.to_string()), identity, admin }
                }
                Err(e) => {
                    eprintln!("warning: {e}");
                    Proxy { workload: admin.to_string(), identity: None, admin }
                }
            })
            .collect())
    }
}

/// The proxies in the control plane's `/proxies` document
/// ([`mesh_proto::wire::ProxyListing`]). Entries are read one by one, so one that does not
/// parse is skipped with a warning rather than hiding every other proxy.
pub fn parse_registered(doc: &serde_json::Value) -> anyhow::Result<Vec<Proxy>> {
    let Some(list) = doc.get("proxies").and_then(|p| p.as_array()) else {
        bail!("the answer has no \"proxies\" list");
    };
    let mut all = Vec::with_capacity(list.len());
    for p in list {
        let entry = match RegisteredProxy::deserialize(p) {
            Ok(e) => e,
            Err(e) => {
                let workload = p.get("workload").and_then(|w| w.as_str()).unwrap_or_default();
                eprintln!("warning: skipping proxy {workload:?}: {e}");
                continue;
            }
        };
        let admin = Addr { host: entry.admin_addr.ip().to_string(), port: entry.admin_addr.port() };
        let identity = entry.identity.filter(|i| !i.is_empty());
        let workload = if entry.workload.is_empty() { admin.to_string() } else { entry.workload };
        all.push(Proxy { workload, identity, admin });
    }
    Ok(all)
}

/// A proxy's workload name and identity, from its `/config`.
pub fn describe(config: &serde_json::Value) -> (Option<String>, Option<String>) {
    let workload = config.pointer("/config/workload").and_then(|w| w.as_str()).map(String::from);
    let identity = config.pointer("/identity/identity").and_then(|i| i.as_str()).map(String::from);
    (workload, identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_registered_proxies() {
        let doc = json!({ "proxies": [
            { "workload": "books-0", "identity": "spiffe://d/ns/default/sa/books", "admin_addr": "127.0.0.1:4191" },
            { "workload": "traffic", "identity": null, "admin_addr": "127.0.0.1:4192" },
            { "workload": "broken", "admin_addr": "nowhere" },
        ]});
        let all = parse_registered(&doc).expect("parses");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].workload, "books-0");
        assert_eq!(all[0].identity.as_deref(), Some("spiffe://d/ns/default/sa/books"));
        assert_eq!(all[1].admin.to_string(), "127.0.0.1:4192");
        assert_eq!(all[1].identity, None);
        assert!(parse_registered(&json!({})).is_err());
    }

    #[test]
    fn describes_a_proxy_from_its_config() {
        let c =
            json!({ "config": { "workload": "web-1" }, "identity": { "identity": "spiffe://d/ns/default/sa/web" } });
        assert_eq!(describe(&c), (Some("web-1".into()), Some("spiffe://d/ns/default/sa/web".into())));
        assert_eq!(describe(&json!({ "config": { "workload": "x" }, "identity": null })), (Some("x".into()), None));
    }
}
