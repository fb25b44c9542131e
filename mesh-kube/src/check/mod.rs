//! `meshctl check`: one line per check, ✔ or ✘ with a hint. The verdicts
//! are pure functions of what was read from the cluster ([`rules`]); this
//! module's [`pre_install`] and [`installed`] do the reading.

mod gather;
mod live;
pub mod probe;
pub mod rules;

pub use gather::{Probe, installed, pre_install};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// It did not run (and so passed), for the reason in `detail`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl Check {
    /// A passed check.
    pub fn pass(name: &str, detail: impl Into<String>) -> Self {
        Check { name: name.into(), ok: true, detail: detail.into(), hint: None, skipped: false }
    }

    /// A failed check with what to do.
    pub fn fail(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Check { name: name.into(), ok: false, detail: detail.into(), hint: Some(hint.into()), skipped: false }
    }

    /// A check that could not run here; it does not fail `meshctl check`.
    pub fn skip(name: &str, why: impl Into<String>) -> Self {
        Check { name: name.into(), ok: true, detail: why.into(), hint: None, skipped: true }
    }

    /// Pass or fail by `result`.
    pub fn from(name: &str, result: Result<String, (String, String)>) -> Self {
        match result {
            Ok(detail) => Check::pass(name, detail),
            Err((detail, hint)) => Check::fail(name, detail, hint),
        }
    }
}
