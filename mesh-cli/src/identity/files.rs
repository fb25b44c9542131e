//! Files: opening an identity directory, reading the user's files and
//! writing secrets.

use super::DirArg;
use super::show::shown;
use anyhow::{Context as _, anyhow, bail};
use mesh_identity::dir::{self, IdentityDir};
use std::io::Write as _;
use std::path::Path;

/// Opens an existing identity directory, with a helpful error if it is not one.
pub(super) fn open(arg: &DirArg) -> anyhow::Result<IdentityDir> {
    let path = &arg.dir;
    if !path.join(dir::TRUST_DOMAIN).is_file() {
        bail!(
            "{} is not an identity directory (it has no {} file); create one with \
             `meshctl identity init --dir {} --trust-domain TD`",
            path.display(),
            dir::TRUST_DOMAIN,
            shown(path)
        );
    }
    Ok(IdentityDir::new(path))
}

pub(super) fn read_file(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// Writes a secret atomically with mode 0600 (a reader sees the old content
/// or the new, never a part).
pub fn write_secret(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".{}.{}.{}.tmp", name.to_string_lossy(), std::process::id(), fastrand::u32(..)));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}
