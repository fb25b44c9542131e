//! Image layers: a set of files and directories → an uncompressed tar (its
//! digest is the config's `diff_id`) → gzip (the blob the manifest names).
//! Entries are sorted and every parent directory is written, so a layer's
//! bytes depend only on its contents.

use super::tar::{self, Header, Kind};
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;

/// What a layer entry is.
#[derive(Debug, Clone)]
pub enum Data {
    /// A directory.
    Dir,
    /// A regular file's bytes.
    File(Vec<u8>),
    /// A symbolic link's target.
    Symlink(String),
}

/// One file, directory or symlink of a layer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Permission bits.
    pub mode: u32,
    /// Owner and group.
    pub owner: (u32, u32),
    /// What it is.
    pub data: Data,
}

/// A layer's contents by path (relative, no leading `/`).
#[derive(Debug, Clone, Default)]
pub struct Contents {
    entries: BTreeMap<String, Entry>,
}

impl Contents {
    /// Adds a root-owned file; its parent directories are added as root-owned 0755.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.insert(path, Entry { mode, owner: (0, 0), data: Data::File(data) });
    }

    /// Adds a root-owned symlink `path` → `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Entry { mode: 0o777, owner: (0, 0), data: Data::Symlink(target.to_string()) });
    }

    /// Whether `path` is in the layer.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_matches('/'))
    }

    /// Adds a directory with its own mode and owner.
    pub fn dir(&mut self, path: &str, mode: u32, owner: (u32, u32)) {
        self.insert(path, Entry { mode, owner, data: Data::Dir });
    }

    fn insert(&mut self, path: &str, entry: Entry) {
        let path = path.trim_matches('/').to_string();
        let mut parent = path.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            self.entries.entry(up.to_string()).or_insert(Entry { mode: 0o755, owner: (0, 0), data: Data::Dir });
            parent = up;
        }
        self.entries.insert(path, entry);
    }

    /// The paths in the layer, sorted.
    #[cfg(test)]
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

/// A built layer: the gzip blob and the digest of the tar inside it.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The compressed tar.
    pub gzip: Vec<u8>,
    /// `sha256:…` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Builds the layer: tar with mtime 0 in path order, then gzip with no name
/// and mtime 0 in its header.
pub fn build(contents: &Contents) -> anyhow::Result<Layer> {
    let mut w = tar::Writer::new(Vec::new());
    for (path, e) in &contents.entries {
        let (kind, link, data): (Kind, &str, &[u8]) = match &e.data {
            Data::Dir => (Kind::Dir, "", b""),
            Data::File(bytes) => (Kind::File, "", bytes),
            Data::Symlink(target) => (Kind::Symlink, target, b""),
        };
        let header = Header { path, kind, mode: e.mode, uid: e.owner.0, gid: e.owner.1, mtime: 0, link };
        w.append(&header, data)?;
    }
    let tar = w.finish()?;
    let diff_id = sha256(&tar);
    let mut gz = GzBuilder::new().mtime(0).write(Vec::new(), Compression::default());
    gz.write_all(&tar)?;
    Ok(Layer { gzip: gz.finish()?, diff_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a missing parent directory (a runtime would create it as it
    /// likes) and unsorted entries.
    #[test]
    fn parents_are_added_and_paths_sorted() {
        let mut c = Contents::default();
        c.file("usr/local/bin/mesh-proxy", 0o755, b"x".to_vec());
        c.dir("tmp", 0o1777, (0, 0));
        c.file("/etc/passwd", 0o644, b"root".to_vec());
        let paths: Vec<&str> = c.paths().collect();
        assert_eq!(
            paths,
            ["etc", "etc/passwd", "tmp", "usr", "usr/local", "usr/local/bin", "usr/local/bin/mesh-proxy"]
        );
    }

    /// Catches a timestamp or insertion order reaching the bytes: the same
    /// contents added in another order give the same digests.
    #[test]
    fn layers_are_reproducible() {
        let mut a = Contents::default();
        a.file("b", 0o644, b"2".to_vec());
        a.file("a", 0o644, b"1".to_vec());
        let mut b = Contents::default();
        b.file("a", 0o644, b"1".to_vec());
        b.file("b", 0o644, b"2".to_vec());
        let (la, lb) = (build(&a).expect("a"), build(&b).expect("b"));
        assert_eq!(la.diff_id, lb.diff_id);
        assert_eq!(sha256(&la.gzip), sha256(&lb.gzip));
    }

    /// Catches a wrong digest encoding (the empty string's SHA-256 is well known).
    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(sha256(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
