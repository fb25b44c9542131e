//! `meshctl identity token`: a join token for one workload identity.

use super::TokenArgs;
use super::files::{open, write_secret};
use super::show::{shown, utc};
use anyhow::{Context as _, anyhow};
use mesh_identity::dir;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

pub(super) fn token(a: &TokenArgs) -> anyhow::Result<()> {
    let d = open(&a.dir)?;
    let token = d.mint_token(&a.namespace, &a.service_account, a.ttl).context("cannot mint a join token")?;
    let claims = mesh_identity::token::peek(&token).map_err(|e| anyhow!("the minted token does not read back: {e}"))?;
    let until = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp);
    match &a.output {
        Some(file) => {
            write_secret(file, &format!("{token}\n"))?;
            eprintln!(
                "wrote a join token for {} to {} (mode 0600), valid until {}",
                claims.sub,
                file.display(),
                utc(until)
            );
            eprintln!(
                "start the proxy with: mesh-proxy --identity-token-file {} --trust-anchors {} ...",
                shown(file),
                shown(&d.path().join(dir::ANCHORS))
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{token}").and_then(|()| out.flush()).context("cannot write the token to stdout")?;
            eprintln!("join token for {}, valid until {}", claims.sub, utc(until));
        }
    }
    Ok(())
}
