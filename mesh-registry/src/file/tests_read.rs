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
