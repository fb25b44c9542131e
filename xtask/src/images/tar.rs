//! A small deterministic tar (POSIX ustar) writer: image layers and the image
//! archive itself. Every header field is ours to choose, so the same entries
//! always give the same bytes (fixed mtime, owner given per entry, no user or
//! group names, no host metadata).

use anyhow::bail;
use std::io::{self, Write};

/// The size of a tar block.
const BLOCK: usize = 512;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file with its bytes.
    File,
    /// A directory (its path gets a trailing `/`).
    Dir,
    /// A symbolic link to [`Header::link`].
    Symlink,
}

/// One entry's metadata; the data is passed alongside.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// Path inside the archive, relative (`etc/passwd`, `blobs/sha256`).
    pub path: &'a str,
    /// File or directory.
    pub kind: Kind,
    /// Permission bits, e.g. 0o755.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// A symlink's target (empty otherwise).
    pub link: &'a str,
}

/// Writes tar entries to `W`; [`Writer::finish`] writes the end-of-archive blocks.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// A tar stream over `out`.
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// Appends one entry (`data` must be empty for a directory).
    pub fn append(&mut self, header: &Header<'_>, data: &[u8]) -> anyhow::Result<()> {
        if header.kind != Kind::File && !data.is_empty() {
            bail!("tar: only a regular file has data ({})", header.path);
        }
        let block = encode_header(header, data.len() as u64)?;
        self.out.write_all(&block)?;
        self.out.write_all(data)?;
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad])?;
        Ok(())
    }

    /// Writes the two zero blocks that end an archive and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes `value` as zero-padded octal digits followed by a NUL into `field`.
fn octal(field: &mut [u8], value: u64, what: &str, path: &str) -> anyhow::Result<()> {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        bail!("tar: {what} {value} of {path} does not fit a ustar header");
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// One ustar header block. Paths longer than 100 bytes are split into the
/// prefix field at a `/`, as ustar allows; longer ones are refused.
fn encode_header(h: &Header<'_>, size: u64) -> anyhow::Result<[u8; BLOCK]> {
    let mut path = h.path.trim_start_matches('/').to_string();
    if path.is_empty() || path.split('/').any(|part| part == "..") {
        bail!("tar: refusing entry path {:?}", h.path);
    }
    if h.kind == Kind::Dir && !path.ends_with('/') {
        path.push('/');
    }
    let (prefix, name) = split_path(&path)?;
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut b[100..108], u64::from(h.mode), "mode", &path)?;
    octal(&mut b[108..116], u64::from(h.uid), "uid", &path)?;
    octal(&mut b[116..124], u64::from(h.gid), "gid", &path)?;
    octal(&mut b[124..136], size, "size", &path)?;
    octal(&mut b[136..148], h.mtime, "mtime", &path)?;
    b[156] = match h.kind {
        Kind::File => b'0',
        Kind::Symlink => b'2',
        Kind::Dir => b'5',
    };
    if h.link.len() > 100 || (h.kind == Kind::Symlink) == h.link.is_empty() {
        bail!("tar: link target {:?} of {path} is missing, misplaced or too long", h.link);
    }
    b[157..157 + h.link.len()].copy_from_slice(h.link.as_bytes());
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    // The checksum is computed with its own field as eight spaces.
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let text = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(text.as_bytes());
    Ok(b)
}

/// Splits a path into ustar's (prefix ≤ 155, name ≤ 100) at a `/`.
fn split_path(path: &str) -> anyhow::Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    // Split at the last '/' that leaves a name of at most 100 bytes (a
    // directory's trailing '/' stays with its name).
    let body = path.strip_suffix('/').unwrap_or(path);
    for (i, _) in body.match_indices('/').rev() {
        let (prefix, name) = (&path[..i], &path[i + 1..]);
        if name.len() <= 100 && prefix.len() <= 155 {
            return Ok((prefix, name));
        }
    }
    bail!("tar: path {path} is too long for a ustar header")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(Header<'_>, &[u8])]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        for (h, data) in entries {
            w.append(h, data).expect("append");
        }
        w.finish().expect("finish")
    }

    fn file(path: &str) -> Header<'_> {
        Header { path, kind: Kind::File, mode: 0o644, uid: 0, gid: 0, mtime: 0, link: "" }
    }

    /// Catches a wrong checksum or misplaced fields: the system's `tar`
    /// (an independent reader) lists what we wrote, with sizes and owners.
    #[test]
    fn the_system_tar_reads_what_we_write() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let bytes = archive(&[
            (Header { path: "etc", kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime: 0, link: "" }, b""),
            (file("etc/passwd"), b"root:x:0:0::/:/sbin/nologin\n"),
            (Header { path: "tmp", kind: Kind::Dir, mode: 0o1777, uid: 0, gid: 0, mtime: 0, link: "" }, b""),
            (Header { uid: 2102, gid: 2103, ..file("data") }, &[7u8; 1000]),
            (file(&long), b"x"),
            (Header { kind: Kind::Symlink, link: "xtables-nft-multi", mode: 0o777, ..file("iptables-nft") }, b""),
        ]);
        assert_eq!(bytes.len() % BLOCK, 0);
        let dir = std::env::temp_dir().join(format!("xtask-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.tar");
        std::fs::write(&path, &bytes).expect("write");
        let out =
            std::process::Command::new("tar").args(["--numeric-owner", "-tvf"]).arg(&path).output().expect("tar runs");
        let _ = std::fs::remove_dir_all(&dir);
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "tar refused it: {}", String::from_utf8_lossy(&out.stderr));
        assert!(listing.contains("drwxrwxrwt 0/0"), "{listing}");
        let data: Vec<&str> =
            listing.lines().find(|l| l.ends_with(" data")).expect("data listed").split_whitespace().collect();
        assert_eq!(data[..3], ["-rw-r--r--", "2102/2103", "1000"], "{listing}");
        assert!(listing.contains(&long), "{listing}");
        assert!(listing.contains("iptables-nft -> xtables-nft-multi"), "{listing}");
    }

    /// Catches host metadata leaking in: the same entries give the same bytes.
    #[test]
    fn output_is_deterministic() {
        let a = archive(&[(file("a"), b"1")]);
        let b = archive(&[(file("a"), b"1")]);
        assert_eq!(a, b);
    }

    /// Catches path traversal and overlong paths written silently.
    #[test]
    fn bad_paths_are_refused() {
        let mut w = Writer::new(Vec::new());
        assert!(w.append(&file("../etc/passwd"), b"").is_err());
        assert!(w.append(&file(&"x".repeat(300)), b"").is_err());
    }
}
