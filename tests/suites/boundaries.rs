//! Crate boundaries, enforced over `cargo metadata`: who may depend on what.
//!
//! Each rule is its own test, so a failure names the rule; each message
//! names the offending edge (with the path that leads to it) and what to do.
//! The rules read the manifests' declared dependencies (direct rules) and
//! cargo's resolve graph (tree rules). The resolve covers every platform and
//! the whole workspace's features, so the tree rules are conservative: they
//! may see an edge a single crate's build would not, never the reverse.
//!
//! The rules are plain functions over the parsed metadata; the `rule_catches_*`
//! tests run them on small synthetic workspaces, so each rule is shown to fail.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The crate that may talk to Kubernetes (it does not exist yet).
const KUBE_CRATE: &str = "mesh-kube";
/// Kubernetes client crates.
const KUBE_DEPS: &[&str] = &["kube", "k8s-openapi"];
/// The crate that may use rustls directly.
const TLS_CRATE: &str = "mesh-identity";
/// rustls and its direct companions.
const RUSTLS_DEPS: &[&str] = &["rustls", "tokio-rustls", "rustls-pki-types"];
/// What the proxy must never link: the control plane's side and Kubernetes.
const NOT_IN_PROXY: &[&str] = &["mesh-control", "mesh-registry", KUBE_CRATE];
/// The server crates meshctl must not link.
const NOT_IN_MESHCTL: &[&str] = &["mesh-proxy", "mesh-control"];
/// TLS, crypto and gRPC: what would make xtask's first build slow.
const NOT_IN_XTASK: &[&str] = &["rustls", "aws-lc-rs", "aws-lc-sys", "ring", "openssl", "openssl-sys", "tonic"];
/// Crates of which the resolve may hold one semver-major version only.
const SINGLE_VERSION: &[&str] = &["tokio", "hyper", "http", "rustls", "tonic", "prost"];
/// The licence of every workspace member (`license.workspace = true`).
const WORKSPACE_LICENSE: &str = "Apache-2.0";
/// Licences (SPDX identifiers, or `id WITH exception`) a dependency may use.
const LICENSE_ALLOWLIST: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Zlib",
    "CC0-1.0",
    "MPL-2.0",
    "OpenSSL",
    "0BSD",
    "BSL-1.0",
    "Unlicense",
    "CDLA-Permissive-2.0",
];

// ---------------------------------------------------------------------------
// The metadata, parsed.

/// A dependency kind, as cargo names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Normal,
    Dev,
    Build,
}

impl Kind {
    fn parse(v: &Value) -> Kind {
        match v.as_str() {
            Some("dev") => Kind::Dev,
            Some("build") => Kind::Build,
            _ => Kind::Normal,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Normal => "[dependencies]",
            Kind::Dev => "[dev-dependencies]",
            Kind::Build => "[build-dependencies]",
        }
    }
}

#[derive(Debug)]
struct Package {
    name: String,
    version: String,
    license: Option<String>,
    manifest: String,
    /// Dependencies the manifest declares: (package name, kind).
    declared: Vec<(String, Kind)>,
}

/// `cargo metadata`'s packages, workspace members and resolve graph.
#[derive(Debug)]
struct Metadata {
    packages: HashMap<String, Package>,
    members: BTreeSet<String>,
    /// Resolve edges: package id → (dependency id, kinds).
    edges: HashMap<String, Vec<(String, Vec<Kind>)>>,
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

impl Metadata {
    fn parse(v: &Value) -> Metadata {
        let packages = v["packages"]
            .as_array()
            .expect("metadata has packages")
            .iter()
            .map(|p| {
                let declared = p["dependencies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| (str_of(d, "name"), Kind::parse(&d["kind"])))
                    .collect();
                let package = Package {
                    name: str_of(p, "name"),
                    version: str_of(p, "version"),
                    license: p.get("license").and_then(Value::as_str).map(str::to_string),
                    manifest: str_of(p, "manifest_path"),
                    declared,
                };
                (str_of(p, "id"), package)
            })
            .collect();
        let members = v["workspace_members"]
            .as_array()
            .expect("metadata has workspace_members")
            .iter()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect();
        let edges = v["resolve"]["nodes"]
            .as_array()
            .expect("metadata has a resolve graph (do not pass --no-deps)")
            .iter()
            .map(|n| {
                let deps = n["deps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        let kinds = d["dep_kinds"].as_array().into_iter().flatten().map(|k| Kind::parse(&k["kind"]));
                        (str_of(d, "pkg"), kinds.collect())
                    })
                    .collect();
                (str_of(n, "id"), deps)
            })
            .collect();
        Metadata { packages, members, edges }
    }

    fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.packages.get(id).map_or(id, |p| p.name.as_str())
    }

    /// The workspace member called `name`.
    fn member(&self, name: &str) -> Option<&str> {
        self.members.iter().find(|id| self.name(id) == name).map(String::as_str)
    }

    fn members(&self) -> impl Iterator<Item = &Package> {
        self.members.iter().filter_map(|id| self.packages.get(id))
    }

    /// Every package `from` reaches over edges of `kinds`, each with the
    /// path that reaches it first (`from → … → it`), by name.
    fn closure(&self, from: &str, kinds: &[Kind]) -> BTreeMap<String, String> {
        let mut seen: HashMap<&str, String> = HashMap::new();
        let mut queue = VecDeque::from([(from, self.name(from).to_string())]);
        let mut out = BTreeMap::new();
        while let Some((id, path)) = queue.pop_front() {
            for (dep, dep_kinds) in self.edges.get(id).into_iter().flatten() {
                if !dep_kinds.iter().any(|k| kinds.contains(k)) || seen.contains_key(dep.as_str()) {
                    continue;
                }
                let path = format!("{path} → {}", self.name(dep));
                seen.insert(dep, path.clone());
                out.insert(dep.clone(), path.clone());
                queue.push_back((dep, path));
            }
        }
        out
    }

    /// Package ids in the resolve.
    fn resolved(&self) -> impl Iterator<Item = &String> {
        self.edges.keys()
    }
}

/// `cargo metadata --format-version 1 --locked` of this workspace, once.
fn workspace() -> &'static Metadata {
    static META: OnceLock<Metadata> = OnceLock::new();
    META.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate is in the workspace");
        let out = Command::new(&cargo)
            .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
            .arg(root.join("Cargo.toml"))
            .current_dir(root)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} metadata: {e}", cargo.to_string_lossy()));
        assert!(
            out.status.success(),
            "`cargo metadata --locked` failed (if Cargo.lock is out of date, run `cargo update --workspace` \
             and commit it):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Metadata::parse(&serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON"))
    })
}

fn check(rule: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "boundary rule `{rule}` broken:\n- {}\n", problems.join("\n- "));
}

// ---------------------------------------------------------------------------
// The rules: each returns what breaks it, empty when it holds.

/// Members other than `allowed` that declare a dependency (any kind) on one of `deps`.
fn direct_only_in(m: &Metadata, deps: &[&str], allowed: &str, advice: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for p in m.members().filter(|p| p.name != allowed) {
        for (dep, kind) in p.declared.iter().filter(|(d, _)| deps.contains(&d.as_str())) {
            problems.push(format!(
                "{} depends directly on `{dep}` ({} in {}); only {allowed} may: {advice}",
                p.name,
                kind.label(),
                p.manifest
            ));
        }
    }
    problems.sort();
    problems
}

fn kube_only_in_mesh_kube(m: &Metadata) -> Vec<String> {
    direct_only_in(
        m,
        KUBE_DEPS,
        KUBE_CRATE,
        "Kubernetes API code belongs in the mesh-kube crate, which writes into the control plane's store; \
         move it there and remove the dependency",
    )
}

fn rustls_only_in_mesh_identity(m: &Metadata) -> Vec<String> {
    direct_only_in(
        m,
        RUSTLS_DEPS,
        TLS_CRATE,
        "use what mesh_identity::tls provides (connect, accept, Credentials, web_client_config, and the \
         re-exported ClientConfig, ServerConfig, CertificateDer, PrivateKeyDer, ServerName, ClientStream, \
         ServerStream), adding there what is missing, and remove the dependency",
    )
}

/// `crate_name`'s closure over `kinds` must not reach any of `banned`.
fn tree_excludes(m: &Metadata, crate_name: &str, kinds: &[Kind], banned: &[&str], advice: &str) -> Vec<String> {
    let Some(id) = m.member(crate_name) else {
        return vec![format!("{crate_name} is not a workspace member any more: update this rule")];
    };
    let mut problems: Vec<String> = m
        .closure(id, kinds)
        .into_iter()
        .filter(|(dep, _)| banned.contains(&m.name(dep)))
        .map(|(dep, path)| format!("{crate_name} reaches `{}` through {path}: {advice}", m.name(&dep)))
        .collect();
    problems.sort();
    problems
}

fn proxy_never_links_the_control_plane(m: &Metadata) -> Vec<String> {
    tree_excludes(
        m,
        "mesh-proxy",
        &[Kind::Normal],
        NOT_IN_PROXY,
        "the proxy may use libraries (mesh-policy, mesh-client, mesh-proto, mesh-identity, mesh-core), never \
         the control plane or Kubernetes; move what both need into one of those libraries",
    )
}

fn meshctl_uses_libraries_only(m: &Metadata) -> Vec<String> {
    tree_excludes(
        m,
        "mesh-cli",
        &[Kind::Normal],
        NOT_IN_MESHCTL,
        "meshctl runs the servers as processes (dev-dependencies are fine); move what it needs from them into \
         a library crate",
    )
}

fn xtask_links_no_tls(m: &Metadata) -> Vec<String> {
    // Build dependencies count too: they are compiled for xtask's first run.
    tree_excludes(
        m,
        "xtask",
        &[Kind::Normal, Kind::Build],
        NOT_IN_XTASK,
        "xtask must build fast on a fresh clone; ask the release binaries instead (`meshctl identity ...`, \
         `mesh-test-app ...`) and drop the dependency from xtask/Cargo.toml",
    )
}

/// The semver-compatibility key of a version: `1.2.3` → `1`, `0.14.1` → `0.14`.
fn semver_major(version: &str) -> String {
    let mut parts = version.split(['.', '-', '+']);
    let (major, minor, patch) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (major, minor) {
        ("0", "0") => format!("0.0.{patch}"),
        ("0", _) => format!("0.{minor}"),
        _ => major.to_string(),
    }
}

fn one_major_version_of_key_crates(m: &Metadata) -> Vec<String> {
    let mut by_crate: BTreeMap<&str, BTreeMap<String, Vec<&str>>> = BTreeMap::new();
    for id in m.resolved() {
        let Some(p) = m.packages.get(id) else { continue };
        if SINGLE_VERSION.contains(&p.name.as_str()) {
            by_crate.entry(&p.name).or_default().entry(semver_major(&p.version)).or_default().push(id);
        }
    }
    let mut problems = Vec::new();
    for (name, majors) in by_crate.into_iter().filter(|(_, v)| v.len() > 1) {
        let versions: Vec<String> = majors
            .values()
            .flatten()
            .map(|id| {
                let mut users: Vec<&str> = m
                    .edges
                    .iter()
                    .filter(|(_, deps)| deps.iter().any(|(d, _)| d == *id))
                    .map(|(user, _)| m.name(user))
                    .collect();
                users.sort();
                format!("{} (used by {})", m.packages[*id].version, users.join(", "))
            })
            .collect();
        problems.push(format!(
            "`{name}` is in the build at {} semver-major versions: {}; align the dependents on one version \
             (upgrade or pin the odd one out)",
            majors.len(),
            versions.join("; ")
        ));
    }
    problems
}

fn licenses_are_allowed(m: &Metadata) -> Vec<String> {
    let mut problems = Vec::new();
    for id in m.resolved() {
        let Some(p) = m.packages.get(id) else { continue };
        let who = format!("{} {}", p.name, p.version);
        if m.members.contains(id) {
            if p.license.as_deref() != Some(WORKSPACE_LICENSE) {
                problems.push(format!(
                    "workspace member {who} has licence {:?}, not {WORKSPACE_LICENSE:?}: set \
                     `license.workspace = true` in {}",
                    p.license, p.manifest
                ));
            }
            continue;
        }
        match p.license.as_deref().map(license_allowed) {
            None => problems.push(format!(
                "{who} declares no SPDX `license` (only a licence file, or nothing): read its licence, then \
                 replace or remove the dependency, or extend this rule for it"
            )),
            Some(Ok(true)) => {}
            Some(Ok(false)) => problems.push(format!(
                "{who} is licensed {:?}, which the allowlist does not satisfy; replace or remove the dependency, \
                 or (after a licence review) add the licence to LICENSE_ALLOWLIST in tests/suites/boundaries.rs",
                p.license.as_deref().unwrap_or_default()
            )),
            Some(Err(e)) => problems.push(format!("{who}: cannot read its licence expression: {e}")),
        }
    }
    problems.sort();
    problems
}

// ---------------------------------------------------------------------------
// SPDX licence expressions: `a OR b`, `a AND b`, `a WITH exception`,
// parentheses; AND binds tighter than OR. The legacy `a/b` some crates
// still use means `a OR b`.

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Or,
    And,
    With,
    Id(String),
}

fn tokenize(expr: &str) -> Vec<Token> {
    let spaced = expr.replace('(', " ( ").replace(')', " ) ").replace('/', " OR ");
    spaced
        .split_whitespace()
        .map(|w| match w {
            "(" => Token::Open,
            ")" => Token::Close,
            _ if w.eq_ignore_ascii_case("OR") => Token::Or,
            _ if w.eq_ignore_ascii_case("AND") => Token::And,
            _ if w.eq_ignore_ascii_case("WITH") => Token::With,
            _ => Token::Id(w.to_string()),
        })
        .collect()
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&Token> {
        self.at += 1;
        self.tokens.get(self.at - 1)
    }

    /// or := and (OR and)*
    fn or(&mut self) -> Result<bool, String> {
        let mut ok = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.next();
            ok |= self.and()?;
        }
        Ok(ok)
    }

    /// and := with (AND with)*
    fn and(&mut self) -> Result<bool, String> {
        let mut ok = self.with()?;
        while self.peek() == Some(&Token::And) {
            self.next();
            ok &= self.with()?;
        }
        Ok(ok)
    }

    /// with := id (WITH id)? | ( or )
    fn with(&mut self) -> Result<bool, String> {
        match self.next() {
            Some(Token::Open) => {
                let ok = self.or()?;
                match self.next() {
                    Some(Token::Close) => Ok(ok),
                    other => Err(format!("expected `)`, found {other:?}")),
                }
            }
            Some(Token::Id(id)) => {
                let mut term = id.clone();
                if self.peek() == Some(&Token::With) {
                    self.next();
                    match self.next() {
                        Some(Token::Id(exception)) => term = format!("{term} WITH {exception}"),
                        other => return Err(format!("expected an exception after WITH, found {other:?}")),
                    }
                }
                Ok(LICENSE_ALLOWLIST.contains(&term.as_str()))
            }
            other => Err(format!("expected a licence, found {other:?}")),
        }
    }
}

/// Whether an SPDX expression is satisfied by the allowlist: an OR passes
/// when one branch does, an AND when all do.
fn license_allowed(expr: &str) -> Result<bool, String> {
    let mut p = Parser { tokens: tokenize(expr), at: 0 };
    let ok = p.or()?;
    match p.peek() {
        None => Ok(ok),
        Some(t) => Err(format!("unexpected {t:?} in {expr:?}")),
    }
}

// ---------------------------------------------------------------------------
// The rules, on this workspace.

#[test]
fn kube_and_k8s_openapi_only_in_mesh_kube() {
    check("kube and k8s-openapi only in mesh-kube", kube_only_in_mesh_kube(workspace()));
}

#[test]
fn rustls_only_in_mesh_identity_directly() {
    check("rustls, tokio-rustls and rustls-pki-types only in mesh-identity", rustls_only_in_mesh_identity(workspace()));
}

#[test]
fn mesh_proxy_tree_has_no_control_plane_or_kubernetes() {
    check(
        "mesh-proxy never links mesh-control, mesh-registry or mesh-kube",
        proxy_never_links_the_control_plane(workspace()),
    );
}

#[test]
fn meshctl_does_not_link_the_servers() {
    check("mesh-cli does not link mesh-proxy or mesh-control", meshctl_uses_libraries_only(workspace()));
}

#[test]
fn xtask_has_no_tls_or_grpc() {
    check("xtask links no TLS, crypto or gRPC", xtask_links_no_tls(workspace()));
}

#[test]
fn one_major_version_of_tokio_hyper_http_rustls_tonic_prost() {
    check("one semver-major version of each key crate", one_major_version_of_key_crates(workspace()));
}

#[test]
fn every_licence_is_on_the_allowlist() {
    check("licences on the allowlist", licenses_are_allowed(workspace()));
}

// ---------------------------------------------------------------------------
// The rules catch what they should, on synthetic workspaces.

/// A package for [`synthetic`]: (name, version, licence, declared deps).
type Spec<'a> = (&'a str, &'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);

/// Metadata for `packages` (the first `members` of them are workspace
/// members); resolve edges follow the declared deps, named `name` or
/// `name@version`.
fn synthetic(members: usize, packages: &[Spec<'_>]) -> Metadata {
    let id = |name: &str, version: &str| format!("{name}@{version}");
    let find = |dep: &str| {
        let found = packages.iter().find(|(n, v, ..)| *n == dep || id(n, v) == dep);
        let (n, v, _, _) = found.expect("declared package exists");
        id(n, v)
    };
    let name = |dep: &str| dep.split('@').next().unwrap_or(dep).to_string();
    let kind = |k: &str| if k == "normal" { Value::Null } else { Value::from(k) };
    let json = serde_json::json!({
        "packages": packages.iter().map(|(n, v, l, deps)| serde_json::json!({
            "id": id(n, v), "name": n, "version": v, "license": l, "manifest_path": format!("{n}/Cargo.toml"),
            "dependencies": deps.iter().map(|(d, k)| serde_json::json!({"name": name(d), "kind": kind(k)})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "workspace_members": packages[..members].iter().map(|(n, v, ..)| id(n, v)).collect::<Vec<_>>(),
        "resolve": {"nodes": packages.iter().map(|(n, v, _, deps)| serde_json::json!({
            "id": id(n, v),
            "deps": deps.iter().map(|(d, k)| serde_json::json!({"pkg": find(d), "dep_kinds": [{"kind": kind(k)}]})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()},
    });
    Metadata::parse(&json)
}

const A: Option<&str> = Some("Apache-2.0");

#[test]
fn rule_catches_kube_outside_mesh_kube() {
    let ok = synthetic(1, &[("mesh-kube", "0.1.0", A, &[("kube", "normal")]), ("kube", "1.0.0", A, &[])]);
    assert!(kube_only_in_mesh_kube(&ok).is_empty());
    let bad =
        synthetic(1, &[("mesh-control", "0.1.0", A, &[("k8s-openapi", "normal")]), ("k8s-openapi", "0.25.0", A, &[])]);
    let p = kube_only_in_mesh_kube(&bad);
    assert!(p.len() == 1 && p[0].contains("mesh-control depends directly on `k8s-openapi`"), "{p:?}");
}

#[test]
fn rule_catches_rustls_outside_mesh_identity_even_as_a_dev_dependency() {
    let bad = synthetic(
        2,
        &[
            ("mesh-identity", "0.1.0", A, &[("rustls", "normal")]),
            ("mesh-proxy", "0.1.0", A, &[("mesh-identity", "normal"), ("tokio-rustls", "dev")]),
            ("rustls", "0.23.0", A, &[]),
            ("tokio-rustls", "0.26.0", A, &[("rustls", "normal")]),
        ],
    );
    let p = rustls_only_in_mesh_identity(&bad);
    assert!(
        p.len() == 1 && p[0].contains("mesh-proxy depends directly on `tokio-rustls` ([dev-dependencies]"),
        "{p:?}"
    );
}

#[test]
fn rule_catches_the_control_plane_deep_in_the_proxy_tree() {
    let bad = synthetic(
        3,
        &[
            ("mesh-proxy", "0.1.0", A, &[("mesh-policy", "normal"), ("mesh-kube", "dev")]),
            ("mesh-policy", "0.1.0", A, &[("mesh-registry", "normal")]),
            ("mesh-registry", "0.1.0", A, &[]),
            ("mesh-kube", "0.1.0", A, &[]),
        ],
    );
    let p = proxy_never_links_the_control_plane(&bad);
    assert_eq!(p.len(), 1, "dev-dependencies do not count: {p:?}");
    assert!(p[0].contains("through mesh-proxy → mesh-policy → mesh-registry"), "{p:?}");
}

#[test]
fn rule_catches_meshctl_linking_a_server() {
    let bad = synthetic(2, &[("mesh-cli", "0.1.0", A, &[("mesh-proxy", "normal")]), ("mesh-proxy", "0.1.0", A, &[])]);
    assert_eq!(meshctl_uses_libraries_only(&bad).len(), 1);
    let ok = synthetic(2, &[("mesh-cli", "0.1.0", A, &[("mesh-proxy", "dev")]), ("mesh-proxy", "0.1.0", A, &[])]);
    assert!(meshctl_uses_libraries_only(&ok).is_empty(), "a dev-dependency is fine");
}

#[test]
fn rule_catches_tls_in_xtask_through_a_build_dependency() {
    let bad = synthetic(
        1,
        &[
            ("xtask", "0.1.0", A, &[("helper", "normal")]),
            ("helper", "1.0.0", A, &[("aws-lc-sys", "build")]),
            ("aws-lc-sys", "0.30.0", A, &[]),
        ],
    );
    let p = xtask_links_no_tls(&bad);
    assert!(p.len() == 1 && p[0].contains("xtask → helper → aws-lc-sys"), "{p:?}");
}

#[test]
fn rule_catches_two_major_versions() {
    assert_eq!(
        (semver_major("1.47.0"), semver_major("0.14.2"), semver_major("0.0.3")),
        ("1".into(), "0.14".into(), "0.0.3".into())
    );
    let bad = synthetic(
        1,
        &[
            ("app", "0.1.0", A, &[("prost@0.14.1", "normal"), ("old", "normal")]),
            ("old", "1.0.0", A, &[("prost@0.13.5", "normal")]),
            ("prost", "0.14.1", A, &[]),
            ("prost", "0.13.5", A, &[]),
        ],
    );
    let p = one_major_version_of_key_crates(&bad);
    assert!(p.len() == 1 && p[0].contains("0.13.5 (used by old)") && p[0].contains("0.14.1 (used by app)"), "{p:?}");
    let fine = synthetic(1, &[("app", "0.1.0", A, &[("tokio", "normal")]), ("tokio", "1.40.0", A, &[])]);
    assert!(one_major_version_of_key_crates(&fine).is_empty());
}

#[test]
fn rule_catches_missing_and_disallowed_licences() {
    let bad = synthetic(
        2,
        &[
            ("mesh-proxy", "0.1.0", A, &[("gpl", "normal"), ("nolicence", "normal"), ("either", "normal")]),
            ("mesh-new", "0.1.0", Some("MIT"), &[]),
            ("gpl", "1.0.0", Some("GPL-3.0-only AND MIT"), &[]),
            ("nolicence", "1.0.0", None, &[]),
            ("either", "1.0.0", Some("LGPL-2.1-or-later OR MIT"), &[]),
        ],
    );
    let p = licenses_are_allowed(&bad);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p.iter().any(|m| m.starts_with("gpl 1.0.0 is licensed \"GPL-3.0-only AND MIT\"")), "{p:?}");
    assert!(p.iter().any(|m| m.starts_with("nolicence 1.0.0 declares no SPDX")), "{p:?}");
    assert!(p.iter().any(|m| m.starts_with("workspace member mesh-new 0.1.0")), "{p:?}");
}

#[test]
fn licence_expressions() {
    let ok = |e: &str| license_allowed(e).unwrap_or_else(|err| panic!("{e}: {err}"));
    assert!(ok("MIT"));
    assert!(ok("MIT OR Apache-2.0"));
    assert!(ok("GPL-3.0-only OR MIT"), "an OR passes when one branch does");
    assert!(!ok("GPL-3.0-only AND MIT"), "an AND needs every part");
    assert!(ok("(MIT OR Apache-2.0) AND Unicode-3.0"));
    assert!(!ok("(MIT OR GPL-2.0-only) AND (LGPL-2.1-only OR SSPL-1.0)"));
    assert!(ok("Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT"));
    assert!(ok("Apache-2.0 WITH LLVM-exception"));
    assert!(!ok("GPL-2.0-only WITH Classpath-exception-2.0"), "an exception does not make a licence allowed");
    assert!(ok("ISC AND (Apache-2.0 OR ISC) AND Apache-2.0 AND MIT AND BSD-3-Clause AND (Apache-2.0 OR ISC OR MIT-0)"));
    assert!(ok("MIT/Apache-2.0"), "the legacy slash means OR");
    assert!(ok("Apache-2.0 / MIT"));
    assert!(!ok("GPL-3.0/AGPL-3.0"));
    assert!(license_allowed("MIT OR").is_err());
    assert!(license_allowed("(MIT").is_err());
    assert!(license_allowed("MIT Apache-2.0").is_err());
    assert!(license_allowed("").is_err());
}
