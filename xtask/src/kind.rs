//! `cargo xtask e2e-kind`: the mesh on a real (kind) cluster, for users' CI.
//!
//! Creates a kind cluster, loads the images `cargo xtask images` builds,
//! runs `meshctl check --pre`, `install`, `check`, deploys the demo app
//! (`deploy/demo/demo.yaml`) into an injected namespace, sends traffic from
//! a meshed client, asserts that the server proxies saw only mTLS and that
//! an unmeshed client is refused, then uninstalls and deletes the cluster.
//! Where Docker or kind is missing it says so in one line and fails: it
//! never pretends.

use crate::cargo::{self, run_step};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `cargo xtask e2e-kind` options.
#[derive(Debug, clap::Args)]
pub struct KindArgs {
    /// The kind cluster's name.
    #[arg(long, default_value = "mesh-e2e")]
    cluster: String,
    /// Keep the cluster afterwards (for debugging).
    #[arg(long)]
    keep: bool,
}

fn have(tool: &str, probe: &[&str]) -> bool {
    Command::new(tool).args(probe).output().is_ok_and(|o| o.status.success())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let line = cargo::display(cmd);
    let out = cmd.output().with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the end-to-end on kind.
pub fn run(args: &KindArgs) -> anyhow::Result<()> {
    for (tool, probe, hint) in [
        ("docker", &["info"][..], "install Docker and start its daemon"),
        ("kind", &["version"][..], "install kind (https://kind.sigs.k8s.io)"),
        ("kubectl", &["version", "--client"][..], "install kubectl"),
    ] {
        if !have(tool, probe) {
            // One line, and a failure: a missing tool must never look like a pass.
            eprintln!("e2e-kind needs a working `{tool}`: {hint}");
            std::process::exit(2);
        }
    }
    run_step(&mut cargo::cargo(&["run", "--release", "-p", "xtask", "--", "images"]))?;
    let images = cargo::target_dir()?.join("images");
    let meshctl = cargo::release_bin("meshctl")?;
    run_step(Command::new("kind").args(["create", "cluster", "--name", &args.cluster, "--wait", "180s"]))?;
    let result = scenario(args, &images, &meshctl);
    if !args.keep {
        let _ = run_step(Command::new("kind").args(["delete", "cluster", "--name", &args.cluster]));
    }
    result
}

fn scenario(args: &KindArgs, images: &Path, meshctl: &PathBuf) -> anyhow::Result<()> {
    let context = format!("kind-{}", args.cluster);
    for entry in std::fs::read_dir(images).with_context(|| format!("reading {}", images.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tar") {
            run_step(Command::new("kind").args(["load", "image-archive"]).arg(&path).args(["--name", &args.cluster]))?;
        }
    }
    let kubectl = |a: &[&str]| {
        let mut c = Command::new("kubectl");
        c.args(["--context", &context]).args(a);
        c
    };
    let mesh = |a: &[&str]| {
        let mut c = Command::new(meshctl);
        c.args(a).args(["--context", &context]);
        c
    };
    run_step(&mut mesh(&["check", "--pre"]))?;
    run_step(&mut mesh(&["install", "--wait", "5m"]))?;
    run_step(&mut mesh(&["check"]))?;
    let demo = cargo::workspace_root().join("deploy/demo/demo.yaml");
    run_step(kubectl(&["apply", "-f"]).arg(&demo))?;
    run_step(&mut kubectl(&["-n", "demo", "wait", "--for=condition=Available", "deploy", "--all", "--timeout=300s"]))?;
    run_step(&mut mesh(&["check"]))?;

    // A meshed client (the demo namespace injects it) calls web, which calls books and authors.
    let loop_script =
        "for i in $(seq 1 50); do curl -sf http://web.demo.svc.cluster.local:8080/ >/dev/null || exit 1; done";
    run_step(&mut kubectl(&[
        "-n",
        "demo",
        "run",
        "client",
        "--image=curlimages/curl:8.11.1",
        "--restart=Never",
        "--command",
        "--",
        "sh",
        "-c",
        loop_script,
    ]))?;
    run_step(&mut kubectl(&[
        "-n",
        "demo",
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/client",
        "--timeout=180s",
    ]))?;

    // The server proxies saw mTLS only.
    let pods = output(&mut kubectl(&["-n", "demo", "get", "pods", "-l", "app=books", "-o", "name"]))?;
    let mut mtls = 0u64;
    for pod in pods.lines().filter_map(|p| p.strip_prefix("pod/")) {
        let path = format!("/api/v1/namespaces/demo/pods/{pod}:4191/proxy/metrics");
        let metrics = output(&mut kubectl(&["get", "--raw", &path]))?;
        for line in metrics.lines().filter(|l| l.starts_with("request_total{") && l.contains("direction=\"inbound\"")) {
            let count: u64 = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
            if line.contains("tls=\"false\"") && count > 0 {
                bail!("books received plaintext requests: {line}");
            }
            mtls += count;
        }
    }
    if mtls == 0 {
        bail!("books' proxies counted no mTLS requests");
    }
    eprintln!("e2e-kind: books received {mtls} requests, all mTLS");

    // An unmeshed client (a namespace without injection) is refused by books.
    run_step(&mut kubectl(&["create", "namespace", "outside"]))?;
    let refused = kubectl(&[
        "-n",
        "outside",
        "run",
        "intruder",
        "--image=curlimages/curl:8.11.1",
        "--restart=Never",
        "--rm",
        "-i",
        "--command",
        "--",
        "curl",
        "-sf",
        "-m",
        "5",
        "http://books.demo.svc.cluster.local:7001/",
    ])
    .status()?;
    if refused.success() {
        bail!("an unmeshed client reached books: authorization did not hold");
    }
    eprintln!("e2e-kind: an unmeshed client was refused");

    run_step(kubectl(&["delete", "-f"]).arg(&demo).args(["--wait=true"]))?;
    run_step(&mut mesh(&["uninstall"]))?;
    let left = output(&mut kubectl(&[
        "get",
        "all,crd,mutatingwebhookconfigurations,clusterroles",
        "-A",
        "-l",
        "app.kubernetes.io/part-of=mesh",
        "-o",
        "name",
    ]))?;
    if !left.trim().is_empty() {
        bail!("uninstall left objects behind:\n{left}");
    }
    eprintln!("e2e-kind: passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Catches the demo manifests drifting from the images `cargo xtask
    /// images` tags (the workspace version): kind would have no such image.
    #[test]
    fn the_demo_uses_images_of_this_version() {
        let demo =
            std::fs::read_to_string(crate::cargo::workspace_root().join("deploy/demo/demo.yaml")).expect("demo.yaml");
        let images: Vec<&str> = demo.lines().filter_map(|l| l.trim().strip_prefix("image: ")).collect();
        assert!(!images.is_empty());
        for image in images {
            assert!(image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))), "{image} is not this version's");
        }
    }
}
