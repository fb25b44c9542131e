//! `meshctl identity status`: the trust domain, the anchors, the issuer,
//! where a rotation stands and what needs attention.

use super::DirOutputArgs;
use super::files::open;
use super::show::{print_json, span, utc};
use super::snapshot::{Cert, Snapshot};
use crate::Output;
use anyhow::bail;
use mesh_identity::dir::{self, IdentityDir};
use serde_json::json;
use std::fmt::Write as _;
use std::time::SystemTime;

pub(super) fn status(a: &DirOutputArgs) -> anyhow::Result<()> {
    let d = open(&a.dir)?;
    let snap = Snapshot::read(&d)?;
    let now = SystemTime::now();
    let (stage, next) = snap.stage(d.path());
    let warnings = snap.warnings(d.path(), now);
    match a.output {
        Output::Json => print_json(&json!({
            "dir": d.path(),
            "trust_domain": snap.trust_domain,
            "anchors": snap.anchors.iter().map(|c| c.json(now)).collect::<Vec<_>>(),
            "issuer": snap.issuer.as_ref().map(|c| c.json(now)),
            "issuer_signed_by_newest_anchor": snap.issuer_under_newest,
            "anchor_key_present": snap.anchor_key,
            "rotation": stage,
            "next": next,
            "warnings": warnings,
            "problem": snap.problem,
        }))?,
        Output::Human => print!("{}", render_status(&d, &snap, now)),
    }
    if let Some(p) = snap.problem {
        bail!("the control plane would refuse this directory: {p}");
    }
    Ok(())
}

pub(super) fn render_status(d: &IdentityDir, snap: &Snapshot, now: SystemTime) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "identity directory: {}", d.path().display());
    let _ = writeln!(s, "trust domain:       {}", snap.trust_domain);
    let n = snap.anchors.len();
    let certs: Vec<(String, &Cert)> = snap
        .anchors
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let role = match (n, i + 1 == n) {
                (1, _) => c.role.to_string(),
                (_, true) => format!("{} (new)", c.role),
                (_, false) => format!("{} (old)", c.role),
            };
            (role, c)
        })
        .chain(snap.issuer.iter().map(|c| (c.role.to_string(), c)))
        .collect();
    let rows: Vec<[String; 5]> = certs
        .iter()
        .map(|(role, c)| {
            [
                role.clone(),
                c.info.subject.clone(),
                c.short_id().to_string(),
                utc(c.info.not_after),
                match c.info.not_after.duration_since(now) {
                    Ok(left) => span(left),
                    Err(_) => "EXPIRED".to_string(),
                },
            ]
        })
        .collect();
    let headers = ["KIND", "SUBJECT", "SHA-256", "EXPIRES", "LEFT"];
    let mut widths = headers.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let parts: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        parts.join("   ").trim_end().to_string()
    };
    let _ = writeln!(s, "\n{}", line(headers));
    for r in &rows {
        let _ = writeln!(s, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    if snap.issuer.is_none() {
        let _ =
            writeln!(s, "issuer             (missing or unreadable: {})", d.path().join(dir::ISSUER_CERT).display());
    }
    s.push('\n');
    if snap.anchors.len() > 1 {
        let signer = if snap.issuer_under_newest { "the newest anchor" } else { "an older anchor" };
        let _ = writeln!(
            s,
            "anchor rotation in progress: {} anchors; the issuer is signed by {signer}",
            snap.anchors.len()
        );
    }
    if let (_, Some(next)) = snap.stage(d.path()) {
        let _ = writeln!(s, "next: {next}");
    }
    if !snap.anchor_key {
        let _ = writeln!(s, "note: no {} here (your own CA): `rotate issuer` needs it", dir::ANCHOR_KEY);
    }
    for w in snap.warnings(d.path(), now) {
        let _ = writeln!(s, "warning: {w}");
    }
    if snap.problem.is_none() {
        let _ = writeln!(s, "ok: the control plane can use this directory");
    }
    s
}
