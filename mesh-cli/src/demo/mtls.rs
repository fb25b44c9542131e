//! The demo's identity: a CA of its own in the run directory, and a join
//! token per workload, so that every proxy gets a certificate from the
//! control plane and all meshed traffic is mTLS.

use crate::identity::write_secret;
use anyhow::{Context as _, anyhow};
use mesh_identity::dir::{self, IdentityDir};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The demo's trust domain.
pub const TRUST_DOMAIN: &str = "demo.mesh";
/// The namespace of every demo workload (targets are `<service>.default`).
pub const NAMESPACE: &str = "default";
/// How long the join tokens are valid: a token gets its proxy the first
/// certificate only, and once; the demo mints one each time it starts a proxy.
const TOKEN_TTL: Duration = mesh_identity::token::DEFAULT_TTL;

/// The demo's CA and tokens.
#[derive(Debug, Clone)]
pub struct DemoIdentity {
    dir: IdentityDir,
    tokens: PathBuf,
    /// Lifetime of the proxies' certificates (`mesh-control --cert-ttl`).
    pub cert_ttl: Duration,
}

impl DemoIdentity {
    /// Creates `<run>/identity` (the CA) and `<run>/tokens`, both private.
    pub fn create(run_dir: &Path, cert_ttl: Duration) -> anyhow::Result<Self> {
        let path = run_dir.join("identity");
        let tokens = run_dir.join("tokens");
        for d in [&path, &tokens] {
            private_dir(d)?;
        }
        let dir = IdentityDir::new(&path);
        dir.init(TRUST_DOMAIN, None).with_context(|| format!("cannot create the demo's CA in {}", path.display()))?;
        Ok(Self { dir, tokens, cert_ttl })
    }

    /// The identity directory (for `mesh-control --identity-dir`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The trust bundle (for `mesh-proxy --trust-anchors`).
    pub fn anchors(&self) -> PathBuf {
        self.dir.path().join(dir::ANCHORS)
    }

    /// Where `workload`'s join token is.
    pub fn token_file(&self, workload: &str) -> PathBuf {
        self.tokens.join(format!("{workload}.token"))
    }

    /// Mints a token for `workload` running as `service_account` and writes
    /// it to its file (mode 0600, replaced atomically).
    pub fn write_token(&self, workload: &str, service_account: &str) -> anyhow::Result<()> {
        let token = self
            .dir
            .mint_token(NAMESPACE, service_account, TOKEN_TTL)
            .map_err(|e| anyhow!("cannot mint a join token for {workload}: {e}"))?;
        write_secret(&self.token_file(workload), &format!("{token}\n"))
    }

    /// `spiffe://demo.mesh/ns/default/sa/<service_account>`.
    pub fn spiffe_id(service_account: &str) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service_account}")
    }
}

fn private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path).with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_name_their_workload_and_stay_private() {
        let run = tempfile::tempdir().expect("temp dir");
        let id = DemoIdentity::create(run.path(), Duration::from_secs(3600)).expect("create");
        id.write_token("books-0", "books").expect("token");
        let file = id.token_file("books-0");
        let token = std::fs::read_to_string(&file).expect("read");
        let claims = mesh_identity::token::peek(&token).expect("a join token");
        assert_eq!(claims.sub, DemoIdentity::spiffe_id("books"));
        assert_eq!(std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777, 0o600);
        for d in [id.dir(), run.path().join("tokens").as_path()] {
            assert_eq!(std::fs::metadata(d).expect("stat").permissions().mode() & 0o777, 0o700, "{}", d.display());
        }
        assert!(id.anchors().is_file());
        assert!(DemoIdentity::create(run.path(), Duration::from_secs(60)).is_err(), "never reuses a directory");
    }
}
