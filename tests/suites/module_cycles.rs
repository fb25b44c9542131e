//! No import cycles between the top-level modules of any workspace crate: a
//! module's `crate::other` references (outside comments and test files)
//! must form a graph without cycles, so each module can be read — and moved
//! to a crate of its own — by following its uses one way. A cycle fails with
//! the modules on it and one reference for each edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges between top-level modules: module → (used module → one file that uses it).
type Graph = BTreeMap<String, BTreeMap<String, PathBuf>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Test-only files: `tests.rs`, `tests_*.rs`, `*_tests.rs`, `test_support.rs`.
fn is_test_file(path: &Path) -> bool {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    stem == "tests" || stem.starts_with("tests_") || stem.ends_with("_tests") || stem == "test_support"
}

/// The module graph of a crate's `src`.
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let top = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_string())
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|p| top(p)).collect();
    let mut graph: Graph = modules.iter().map(|m| (m.clone(), BTreeMap::new())).collect();
    for file in files.iter().filter(|p| !is_test_file(p)) {
        let Some(from) = top(file) else { continue };
        let text = std::fs::read_to_string(file).unwrap_or_default();
        // Code before an inline `#[cfg(test)] mod tests {` block only.
        let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String =
                    line[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if name != from && modules.contains(&name) {
                    graph.entry(from.clone()).or_default().entry(name).or_insert_with(|| file.clone());
                }
            }
        }
    }
    graph
}

/// Every cycle found by a depth-first search, as the modules on it.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn visit(
        m: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            found.push(path[i..].to_vec());
            return;
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_string());
        for next in graph.get(m).into_iter().flat_map(BTreeMap::keys) {
            visit(next, graph, path, done, found);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

fn describe(graph: &Graph, cycle: &[String]) -> String {
    let mut edges = Vec::new();
    for (i, from) in cycle.iter().enumerate() {
        let to = &cycle[(i + 1) % cycle.len()];
        let file = graph.get(from).and_then(|e| e.get(to)).map(|p| p.display().to_string()).unwrap_or_default();
        edges.push(format!("{from} → {to} ({file})"));
    }
    edges.join(", ")
}

#[test]
fn no_crate_has_a_module_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut problems = Vec::new();
    let mut crates = 0;
    for entry in std::fs::read_dir(&root).expect("workspace root").flatten() {
        let src = entry.path().join("src");
        if !entry.path().join("Cargo.toml").is_file() || !src.is_dir() {
            continue;
        }
        crates += 1;
        let graph = module_graph(&src);
        for cycle in cycles(&graph) {
            problems.push(format!("{}: {}", entry.file_name().to_string_lossy(), describe(&graph, &cycle)));
        }
    }
    assert!(crates >= 10, "found only {crates} crates under {}", root.display());
    assert!(
        problems.is_empty(),
        "module cycles (move the shared item to a module both can use, or invert one dependency):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_finds_a_cycle_and_ignores_comments_and_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(p, text).expect("write");
    };
    write("lib.rs", "mod a;\nmod b;\nmod c;\n");
    write("a.rs", "use crate::b::X;\n");
    write("b/mod.rs", "mod inner;\n");
    write("b/inner.rs", "pub fn f() { crate::c::g(); }\n");
    write("c.rs", "// see crate::a for why\npub fn g() {}\n#[cfg(test)]\nmod tests {\n use crate::a::Y;\n}\n");
    write("c/tests.rs", "use crate::a::Z;\n");
    let graph = module_graph(src);
    assert!(cycles(&graph).is_empty(), "comments and tests are not dependencies: {graph:?}");
    write("c.rs", "use crate::a::Y;\n");
    let found = cycles(&module_graph(src));
    assert_eq!(found, vec![vec!["a".to_string(), "b".into(), "c".into()]]);
    assert!(describe(&module_graph(src), &found[0]).contains("b → c ("), "names the edges");
}
