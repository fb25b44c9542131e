//! Reading the file: missing files and bytes that are not UTF-8.

use super::test_support::{books, pos};
use super::*;

// --- Reading ------------------------------------------------------------------

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, books("127.0.0.1:4243")).expect("write");
    assert_eq!(load(&path).expect("valid").endpoint_count(), 1);

    let missing = dir.path().join("missing.yaml");
    let err = load(&missing).expect_err("missing");
    assert!(matches!(err, FileError::Read { .. }));
    assert!(err.to_string().starts_with("cannot read registry file "), "{err}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");

    std::fs::write(&path, b"services: []\n# caf\xe9\n").expect("write");
    match load(&path) {
        Err(FileError::Invalid { problems, .. }) => {
            assert_eq!(pos(&problems[0]), (2, 6));
            assert!(problems[0].message.contains("not valid UTF-8"));
        }
        other => panic!("expected invalid UTF-8, got {other:?}"),
    }
}

/// Found by the `registry_yaml` fuzz target: in a file whose lines end in a
/// bare `\r` (old Mac line endings; YAML breaks lines there too), the bad
/// byte was placed on line 1 at a column past the line's end, since only
/// `\n` counted as a line break. Catches a UTF-8 location that counts lines
/// differently from the YAML parser's own problems.
#[test]
fn bad_bytes_are_located_on_yaml_lines_whatever_the_line_endings() {
    for (text, at) in [
        (&b"services:\r  - name: x\r    \xff\r"[..], (3, 5)),
        (b"services:\r\n  - name: x\r\n    \xff\r\n", (3, 5)),
        (b"services:\n\xff", (2, 1)),
    ] {
        match parse_bytes(Path::new("r.yaml"), text) {
            Err(FileError::Invalid { problems, .. }) => assert_eq!(pos(&problems[0]), at, "{text:?}"),
            other => panic!("expected invalid UTF-8, got {other:?}"),
        }
    }
    // The YAML parser numbers bare-`\r` lines the same way.
    match parse(Path::new("r.yaml"), "services:\r  - name: x\r    bogus: 1\r") {
        Err(FileError::Invalid { problems, .. }) => assert_eq!(pos(&problems[0]).0, 3, "{problems:?}"),
        other => panic!("expected a problem, got {other:?}"),
    }
}
