//! Helpers shared by the file registry's tests: parsing a registry text and
//! asserting on its problems, and the services the policy tests build on.

use super::*;

const PATH: &str = "registry.yaml";

pub(super) fn parsed(text: &str) -> Result<RegistrySnapshot, FileError> {
    parse(Path::new(PATH), text)
}

pub(super) fn valid(text: &str) -> RegistrySnapshot {
    match parsed(text) {
        Ok(snapshot) => snapshot,
        Err(err) => panic!("expected a valid registry, got:\n{err}"),
    }
}

pub(super) fn problems(text: &str) -> Vec<Problem> {
    match parsed(text) {
        Ok(snapshot) => panic!("expected a rejection, got {snapshot:?}"),
        Err(FileError::Invalid { problems, .. }) => problems,
        Err(err) => panic!("expected Invalid, got {err}"),
    }
}

/// Asserts that `text` has exactly one problem, on `line`, mentioning `needle`.
pub(super) fn one_problem(text: &str, line: u32, needle: &str) -> Problem {
    let problems = problems(text);
    assert_eq!(problems.len(), 1, "expected one problem, got {problems:#?}");
    let problem = problems.into_iter().next().expect("one problem");
    assert_eq!(pos(&problem).0, line, "wrong line for {problem:?}");
    assert!(problem.message.contains(needle), "{:?} lacks {needle:?}", problem.message);
    problem
}

/// Services every test routes between.
pub(super) const SERVICES: &str = "\
services:
  - name: books
    addresses: [10.96.0.10]
    ports: [{port: 7001, targetPort: 8001}, {port: 7002}]
    endpoints: [{ip: 10.0.0.5}]
  - name: books-v2
    ports: [{port: 7001}]
  - name: web
    ports: [{port: 80}]
  - name: shelf
    namespace: shop
    serviceAccount: shelf-sa
    ports: [{port: 9000}]
    endpoints: [{address: \"127.0.0.1:4243\"}, {address: \"127.0.0.1:4244\"}]
";

/// The services followed by `rest`.
pub(super) fn with(rest: &str) -> String {
    format!("{SERVICES}{rest}")
}

/// The 1-based line of the only line containing `needle`.
pub(super) fn line_of(text: &str, needle: &str) -> u32 {
    let lines: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.contains(needle)).map(|(i, _)| i + 1).collect();
    assert_eq!(lines.len(), 1, "{needle:?} must be on exactly one line: {lines:?}");
    u32::try_from(lines[0]).expect("line")
}

/// Asserts that `text` has one problem, on the line holding `at`, whose
/// message contains `needle`.
pub(super) fn rejects(text: &str, at: &str, needle: &str) {
    one_problem(text, line_of(text, at), needle);
}

/// A single-port `books` service with one endpoint at `address`.
pub(super) fn books(address: &str) -> String {
    format!(
        "services:\n  - name: books\n    ports:\n      - port: 7001\n    endpoints:\n      \
         - address: \"{address}\"\n"
    )
}

/// A problem's line and column (file problems always have them).
pub(super) fn pos(problem: &Problem) -> (u32, u32) {
    problem.at.text_position().expect("a file problem has a line and column")
}
