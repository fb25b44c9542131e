//! Resource limits a process hands on to its children.

use crate::sys;
use std::io;

/// The soft open-file limit before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found.
    pub before: u64,
    /// The soft limit now: the hard limit.
    pub after: u64,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, which its
/// children inherit. Many clients or connections at once need it: a
/// thousand TLS clients and the server they talk to hold over 2,000
/// descriptors, and a common soft limit is 1,024.
pub fn raise_open_files() -> io::Result<OpenFiles> {
    let (soft, hard) = sys::open_files_limit()?;
    if soft < hard {
        sys::set_open_files_soft(hard, hard)?;
    }
    Ok(OpenFiles { before: soft, after: soft.max(hard) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft limit ends at the hard one and never drops. Catches: raising
    /// the hard limit (refused without privilege) or lowering the soft one.
    #[test]
    fn soft_limit_reaches_the_hard_limit() {
        let r = raise_open_files().expect("raising to the hard limit is always allowed");
        assert!(r.after >= r.before);
        let (soft, hard) = sys::open_files_limit().expect("readable");
        assert_eq!((soft, hard), (r.after, r.after));
    }
}
