//! Traffic through the lab: an HTTP load from a pod, and a packet capture
//! on the bridge.

use super::procs::{ProcId, eventually};
use super::{BRIDGE, Lab};
use crate::pcap;
use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

/// What an `http-load` run saw.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// 2xx responses.
    pub ok: u64,
    /// Failures (status or transport).
    pub failed: u64,
    /// Successes by `x-replica`.
    pub by_replica: BTreeMap<String, u64>,
    /// The first few failures.
    pub errors: Vec<String>,
}

impl Lab {
    /// Starts `mesh-test-app http-load` in a pod (until stopped, at most 2 min).
    pub fn start_load(&mut self, pod: &str, url: &str, concurrency: usize, pause: Duration) -> ProcId {
        let app = self.test_app.clone();
        let argv = [
            app.as_str(),
            "http-load",
            "--url",
            url,
            "--duration",
            "120s",
            "--concurrency",
            &concurrency.to_string(),
            "--pause",
            &format!("{}ms", pause.as_millis()),
            "--json",
        ];
        let id = self.spawn(pod, "http-load", &argv);
        self.wait_output(id, "progress", Duration::from_secs(10));
        id
    }

    /// The latest `(ok, failed)` a running load reported.
    pub fn load_progress(&self, id: ProcId) -> (u64, u64) {
        let log = self.stderr(id);
        let Some(line) = log.lines().rev().find(|l| l.starts_with("progress ")) else { return (0, 0) };
        let field =
            |k: &str| line.split_whitespace().find_map(|f| f.strip_prefix(k)).and_then(|v| v.parse().ok()).unwrap_or(0);
        (field("ok="), field("failed="))
    }

    /// Waits until the load has `ok` successes in all.
    pub fn wait_load_ok(&self, id: ProcId, ok: u64, timeout: Duration) {
        let done = eventually(timeout, || self.load_progress(id).0 >= ok);
        assert!(done, "the load never reached {ok} successes: {:?}\n{}", self.load_progress(id), self.logs(id));
    }

    /// Stops a load (SIGTERM) and returns what it saw.
    pub fn stop_load(&mut self, id: ProcId) -> LoadResult {
        self.signal(id, "TERM");
        let st = self.wait_exit(id, Duration::from_secs(20));
        assert!(st.success(), "http-load failed: {st}\n{}", self.logs(id));
        parse_load(&self.stdout(id))
    }

    // ---- capture ----

    /// Starts `tcpdump` on the bridge (in the bridge namespace), capturing
    /// every TCP packet between the lab's namespaces; returns once it captures.
    pub fn start_capture(&mut self) -> ProcId {
        let ns = self.bridge_ns.clone();
        let argv = ["tcpdump", "-i", BRIDGE, "-n", "-U", "--immediate-mode", "-s", "0", "-w", "-", "tcp"];
        let id = self.spawn_ns(&ns, "tcpdump", argv.iter().map(|s| s.to_string()).collect());
        self.wait_output(id, "listening on", Duration::from_secs(10));
        id
    }

    /// Stops the capture and parses what it wrote.
    pub fn stop_capture(&mut self, id: ProcId) -> pcap::Capture {
        self.signal(id, "INT");
        self.wait_exit(id, Duration::from_secs(10));
        let bytes = fs::read(self.procs[id.0].out()).unwrap();
        pcap::parse(&bytes).unwrap_or_else(|e| panic!("bad capture: {e}\n{}", self.logs(id)))
    }
}

/// Parses `http-load --json` output.
pub fn parse_load(stdout: &str) -> LoadResult {
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON in {stdout:?}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    LoadResult {
        ok: v["ok"].as_u64().unwrap(),
        failed: v["failed"].as_u64().unwrap(),
        by_replica: v["by_replica"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
            .collect(),
        errors: v["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap_or("").to_string()).collect(),
    }
}
