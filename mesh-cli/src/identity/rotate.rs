//! `meshctl identity rotate`: the three steps of a trust anchor rotation
//! (`add-anchor`, `issuer`, `retire-anchor`), `issuer` alone being a
//! routine renewal.

use super::files::open;
use super::show::{print_json, shown, span, utc};
use super::snapshot::Snapshot;
use super::{DEFAULT_CERT_TTL, DirOutputArgs, IssuerArgs, RETIRE_MARGIN, RetireArgs};
use crate::Output;
use anyhow::{Context as _, anyhow, bail};
use mesh_identity::dir;
use serde_json::json;
use std::fmt::Write as _;
use std::time::SystemTime;

pub(super) fn add_anchor(a: &DirOutputArgs) -> anyhow::Result<()> {
    let d = open(&a.dir)?;
    d.add_anchor().context("cannot add a trust anchor")?;
    let snap = Snapshot::read(&d)?;
    let now = SystemTime::now();
    let count = snap.anchors.len();
    let dir = shown(d.path());
    let next = format!(
        "wait until every proxy reports {count} trust anchors (metric identity_trust_anchors) before \
         `meshctl identity rotate issuer --dir {dir}`"
    );
    let newest = snap.anchors.last().ok_or_else(|| anyhow!("the bundle is empty after adding an anchor"))?;
    match a.output {
        Output::Json => print_json(&json!({
            "step": "add-anchor",
            "dir": d.path(),
            "anchors": count,
            "new_anchor": newest.json(now),
            "next": next,
        })),
        Output::Human => {
            print!(
                "added a new trust anchor: {}\n\
                 {} now holds {count} anchors; the new anchor's key replaced {} (the old key is no longer needed).\n\
                 the control plane sends the new bundle to every connected proxy within seconds;\n\
                 proxies started from now on should get this {} with --trust-anchors.\n\
                 next: {next}, e.g.\n\
                 \x20   curl -s http://<proxy admin>/metrics | grep '^identity_trust_anchors'\n",
                newest.line(now),
                d.path().join(dir::ANCHORS).display(),
                d.path().join(dir::ANCHOR_KEY).display(),
                dir::ANCHORS,
            );
            Ok(())
        }
    }
}

pub(super) fn rotate_issuer(a: &IssuerArgs) -> anyhow::Result<()> {
    let d = open(&a.dir)?;
    let key = d.path().join(dir::ANCHOR_KEY);
    if !key.is_file() {
        bail!(
            "cannot sign a new issuer: {} is missing.\n\
             This directory was created with your own CA, whose key stays with you: sign a new issuer with it,\n\
             or rotate to a generated anchor first with `meshctl identity rotate add-anchor --dir {}`.",
            key.display(),
            shown(d.path())
        );
    }
    let before = Snapshot::read(&d)?;
    d.rotate_issuer(a.validity).context("cannot rotate the issuer")?;
    let snap = Snapshot::read(&d)?;
    let now = SystemTime::now();
    let issuer = snap.issuer.as_ref().ok_or_else(|| anyhow!("the new issuer does not read back"))?;
    let dir = shown(d.path());
    let rotating = snap.anchors.len() > 1;
    let next = if rotating {
        format!(
            "proxies move to the new issuer as their certificates renew: wait at least one certificate lifetime \
             (mesh-control --cert-ttl, {DEFAULT_CERT_TTL} by default) before `meshctl identity rotate retire-anchor --dir {dir}`"
        )
    } else {
        "nothing: certificates from the previous issuer chain to the same anchor and stay valid until they expire"
            .to_string()
    };
    let mut warnings = Vec::new();
    if let Some(anchor) = snap.anchors.last() {
        if issuer.info.not_after > anchor.info.not_after {
            warnings.push(format!(
                "the issuer outlives its anchor (which expires {}): certificates stop verifying when the anchor expires",
                utc(anchor.info.not_after)
            ));
        }
    }
    match a.output {
        Output::Json => print_json(&json!({
            "step": "issuer",
            "dir": d.path(),
            "previous_issuer": before.issuer.as_ref().map(|c| c.json(now)),
            "issuer": issuer.json(now),
            "anchors": snap.anchors.len(),
            "next": next,
            "warnings": warnings,
        })),
        Output::Human => {
            let mut s = format!(
                "issued a new issuer under the newest trust anchor: {}\n\
                 the control plane signs with it within seconds (it watches {}).\n",
                issuer.line(now),
                d.path().display()
            );
            for w in &warnings {
                let _ = writeln!(s, "warning: {w}");
            }
            let _ = writeln!(s, "next: {next}");
            print!("{s}");
            Ok(())
        }
    }
}

pub(super) fn retire_anchor(a: &RetireArgs) -> anyhow::Result<()> {
    let d = open(&a.dir)?;
    let snap = Snapshot::read(&d)?;
    let dir = shown(d.path());
    if snap.anchors.len() <= 1 {
        let msg = format!(
            "nothing to retire: {} holds a single trust anchor.\n\
             (an anchor rotation is `rotate add-anchor`, then `rotate issuer`, then `rotate retire-anchor`)",
            d.path().join(dir::ANCHORS).display()
        );
        return match a.output {
            Output::Json => {
                print_json(&json!({ "step": "retire-anchor", "dir": d.path(), "retired": 0, "anchors": 1 }))
            }
            Output::Human => {
                println!("{msg}");
                Ok(())
            }
        };
    }
    if snap.issuer_under_newest && !a.force {
        if let Some(issuer) = &snap.issuer {
            let age = SystemTime::now().duration_since(issuer.info.not_before).unwrap_or_default();
            let wait = a.cert_ttl + RETIRE_MARGIN;
            if age < wait {
                bail!(
                    "not yet: proxies may still hold certificates from the old issuer.\n\
                     The current issuer is valid since {} ({} ago); retiring waits one certificate lifetime \
                     ({}, --cert-ttl) plus {} after that: retry in {}.\n\
                     Give --cert-ttl if mesh-control runs with a shorter one; --force retires now, which breaks \
                     the connections of proxies whose certificates still chain to the old anchor.",
                    utc(issuer.info.not_before),
                    span(age),
                    span(a.cert_ttl),
                    span(RETIRE_MARGIN),
                    span(wait.saturating_sub(age)),
                );
            }
        }
    }
    // The library refuses (and writes nothing) while the issuer still chains
    // to an older anchor.
    let retired = d.retire_anchors().context("cannot retire the old trust anchor")?;
    let after = Snapshot::read(&d)?;
    let now = SystemTime::now();
    match a.output {
        Output::Json => print_json(&json!({
            "step": "retire-anchor",
            "dir": d.path(),
            "retired": retired,
            "anchors": after.anchors.len(),
            "anchor": after.anchors.last().map(|c| c.json(now)),
        })),
        Output::Human => {
            let kept = after.anchors.last().map_or_else(String::new, |c| c.line(now));
            print!(
                "retired {retired} old trust anchor{}; {} now holds only the new one: {kept}\n\
                 the control plane sends the bundle to every connected proxy within seconds.\n\
                 the rotation is complete; give proxies started from now on this {} (--trust-anchors).\n\
                 check with: meshctl identity status --dir {dir}\n",
                if retired == 1 { "" } else { "s" },
                d.path().join(dir::ANCHORS).display(),
                dir::ANCHORS,
            );
            Ok(())
        }
    }
}
