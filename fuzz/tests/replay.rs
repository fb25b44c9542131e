//! Replays every committed input of every fuzz target, uninstrumented: the
//! seed corpus (`fuzz/seeds/<target>/`) and the inputs of crashes found and
//! fixed (`fuzz/regressions/<target>/`). `cargo xtask test` runs this, so a
//! fix that regresses, or a target whose assertions no longer hold on real
//! traffic, fails CI without building libFuzzer.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Catches: a target whose seed folder went missing or empty (it would
/// start from nothing), and any committed input that panics a target.
#[test]
fn every_seed_and_regression_input_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    for (name, run) in mesh_fuzz::TARGETS {
        let seeds = inputs(&root.join("seeds").join(name));
        assert!(!seeds.is_empty(), "fuzz/seeds/{name}/ has no seed inputs");
        for input in seeds.iter().chain(&inputs(&root.join("regressions").join(name))) {
            let data = std::fs::read(input).unwrap_or_else(|e| panic!("cannot read {}: {e}", input.display()));
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failures.push(format!("{name}: {}", input.display()));
            }
        }
    }
    assert!(failures.is_empty(), "inputs that fail their target:\n{}", failures.join("\n"));
}

/// Catches: a harness that silently exercises nothing, so every input
/// "passes" (the HTTP/1 target's server never reaching the proxy's request
/// handling, or detection no longer seeing the seeds' protocols).
#[test]
fn the_harnesses_reach_the_code_under_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("seed {p}: {e}"));
    let heads = mesh_proxy::fuzzing::http1_heads(&read("http1_head/pipelined-hop-by-hop.bin"));
    assert_eq!(heads.len(), 2, "both pipelined requests are served");
    assert!(heads[0].received.headers.contains_key("x-secret") && !heads[0].forwarded.headers.contains_key("x-secret"));
    let heads = mesh_proxy::fuzzing::http1_heads(&read("http1_head/websocket-upgrade.bin"));
    assert!(heads.len() == 1 && heads[0].upgrading);
    use mesh_proxy::fuzzing::{Detected, Verdict, classify, client_hello_alpns};
    assert_eq!(classify(&read("detect/curl-h2-prior-knowledge.bin")), Verdict::Is(Detected::Http2));
    let hello = read("client_hello/rustls-mesh-h2.bin");
    assert_eq!(classify(&hello), Verdict::Is(Detected::Tls));
    assert_eq!(client_hello_alpns(&hello), Some(vec![b"mesh/h2".to_vec()]));
    let curl = read("client_hello/curl-h2-http11.bin");
    assert_eq!(client_hello_alpns(&curl), Some(vec![b"h2".to_vec(), b"http/1.1".to_vec()]));
    // The admission seed reaches the injection (a patch that must apply).
    let review = mesh_kube::inject::admission::parse(&read("admission/review-pod.json")).expect("a review");
    let mut ns = mesh_kube::inject::NamespaceInfo { name: "shop".into(), ..Default::default() };
    ns.labels.insert(mesh_kube::inject::INJECT_ANNOTATION.into(), "enabled".into());
    let config = mesh_kube::inject::InjectConfig::new("r", "1", "mesh-system", String::new());
    let (answer, _) = mesh_kube::inject::admission::review(&review, &ns, &config);
    assert!(answer["response"].get("patch").is_some(), "the seed pod is injected");
}
