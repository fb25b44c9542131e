//! JSON Patch (RFC 6902) for injection: the `add`s the webhook returns to the
//! API server, the `remove`s of `meshctl uninject`, and a small applier for
//! the offline path (only `add` and `remove`, the two operations produced here).

use super::containers::VOLUMES;
use super::{INIT_CONTAINER, INJECTED_ANNOTATION, Injection, PROXY_CONTAINER};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

/// One JSON Patch operation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PatchOp {
    /// Add `value` at `path` (insert into an array, set an object member).
    Add {
        /// A JSON Pointer.
        path: String,
        /// What to add.
        value: Value,
    },
    /// Remove what is at `path`.
    Remove {
        /// A JSON Pointer.
        path: String,
    },
}

/// `key` as one JSON Pointer segment (`/` → `~1`, `~` → `~0`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Serialising k8s-openapi types into a Value cannot fail (no maps with
    // non-string keys, no failing Serialize impls).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(super) fn add_injection(inj: &Injection, root: &str, meta: &ObjectMeta, spec: &PodSpec) -> Vec<PatchOp> {
    let mut ops = Vec::new();
    match &meta.annotations {
        None => {
            ops.push(PatchOp::Add { path: format!("{root}/metadata/annotations"), value: to_value(&inj.annotations) })
        }
        Some(_) => ops.extend(inj.annotations.iter().map(|(k, v)| PatchOp::Add {
            path: format!("{root}/metadata/annotations/{}", escape(k)),
            value: Value::String(v.clone()),
        })),
    }
    match &spec.init_containers {
        None => ops
            .push(PatchOp::Add { path: format!("{root}/spec/initContainers"), value: to_value(&inj.init_containers) }),
        Some(_) => ops.extend(
            inj.init_containers
                .iter()
                .enumerate()
                .map(|(i, c)| PatchOp::Add { path: format!("{root}/spec/initContainers/{i}"), value: to_value(c) }),
        ),
    }
    match &spec.volumes {
        None => ops.push(PatchOp::Add { path: format!("{root}/spec/volumes"), value: to_value(&inj.volumes) }),
        Some(_) => ops.extend(
            inj.volumes.iter().map(|v| PatchOp::Add { path: format!("{root}/spec/volumes/-"), value: to_value(v) }),
        ),
    }
    // `add` on an existing member replaces it (RFC 6902 4.1).
    ops.extend(inj.probe_rewrites.iter().map(|r| PatchOp::Add {
        path: format!("{root}/spec/containers/{}/{}", r.container, r.field),
        value: to_value(&r.probe),
    }));
    ops
}

pub(super) fn remove_injection(root: &str, meta: &ObjectMeta, spec: &PodSpec) -> Vec<PatchOp> {
    // The probes first, while the containers' indices are those of `spec`.
    let mut ops: Vec<PatchOp> = super::probes::originals(spec)
        .into_iter()
        .map(|(i, field, value)| PatchOp::Add { path: format!("{root}/spec/containers/{i}/{field}"), value })
        .collect();
    // Removes the named items of a list, last index first so earlier indices
    // stay valid; the whole list when nothing else is left in it.
    let mut remove_from = |field: &str, names: Vec<bool>, whole: bool| {
        let kept = names.iter().filter(|ours| !**ours).count();
        if whole && names.iter().any(|ours| *ours) && kept == 0 {
            ops.push(PatchOp::Remove { path: format!("{root}/{field}") });
        } else {
            for (i, _) in names.iter().enumerate().rev().filter(|(_, ours)| **ours) {
                ops.push(PatchOp::Remove { path: format!("{root}/{field}/{i}") });
            }
        }
    };
    if let Some(inits) = &spec.init_containers {
        remove_from(
            "spec/initContainers",
            inits.iter().map(|c| c.name == PROXY_CONTAINER || c.name == INIT_CONTAINER).collect(),
            true,
        );
    }
    remove_from(
        "spec/containers",
        spec.containers.iter().map(|c| c.name == PROXY_CONTAINER).collect::<Vec<_>>(),
        false,
    );
    if let Some(volumes) = &spec.volumes {
        remove_from("spec/volumes", volumes.iter().map(|v| VOLUMES.contains(&v.name.as_str())).collect(), true);
    }
    if let Some(annotations) = &meta.annotations
        && annotations.contains_key(INJECTED_ANNOTATION)
    {
        let path = if annotations.len() == 1 {
            format!("{root}/metadata/annotations")
        } else {
            format!("{root}/metadata/annotations/{}", escape(INJECTED_ANNOTATION))
        };
        ops.push(PatchOp::Remove { path });
    }
    ops
}

/// Why a patch does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply JSON Patch at {path}: {problem}")]
pub struct PatchError {
    /// The operation's path.
    pub path: String,
    /// What is missing or wrong there.
    pub problem: String,
}

/// Applies `ops` to `doc` in order (RFC 6902 `add` and `remove`).
pub fn apply_patch(doc: &mut Value, ops: &[PatchOp]) -> Result<(), PatchError> {
    for op in ops {
        match op {
            PatchOp::Add { path, value } => add(doc, path, value.clone())?,
            PatchOp::Remove { path } => remove(doc, path)?,
        }
    }
    Ok(())
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// The parent of `path`'s target and the last segment.
fn parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), PatchError> {
    let err = |problem: &str| PatchError { path: path.to_string(), problem: problem.to_string() };
    let rest = path.strip_prefix('/').ok_or_else(|| err("a JSON Pointer starts with /"))?;
    let mut segments: Vec<String> = rest.split('/').map(unescape).collect();
    let last = segments.pop().ok_or_else(|| err("empty pointer"))?;
    let mut at = doc;
    for seg in &segments {
        at = match at {
            Value::Object(map) => map.get_mut(seg).ok_or_else(|| err(&format!("no member {seg:?}")))?,
            Value::Array(items) => {
                let i: usize = seg.parse().map_err(|_| err(&format!("{seg:?} is not an index")))?;
                items.get_mut(i).ok_or_else(|| err(&format!("index {i} out of range")))?
            }
            _ => return Err(err(&format!("{seg:?} is inside a scalar"))),
        };
    }
    Ok((at, last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let err = |problem: String| PatchError { path: path.to_string(), problem };
    let (at, last) = parent(doc, path)?;
    match at {
        Value::Object(map) => {
            map.insert(last, value);
        }
        Value::Array(items) if last == "-" => items.push(value),
        Value::Array(items) => {
            let i: usize = last.parse().map_err(|_| err(format!("{last:?} is not an index")))?;
            if i > items.len() {
                return Err(err(format!("index {i} past the end ({})", items.len())));
            }
            items.insert(i, value);
        }
        _ => return Err(err("the parent is a scalar".into())),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<(), PatchError> {
    let err = |problem: String| PatchError { path: path.to_string(), problem };
    let (at, last) = parent(doc, path)?;
    match at {
        Value::Object(map) => map.remove(&last).map(drop).ok_or_else(|| err(format!("no member {last:?}"))),
        Value::Array(items) => {
            let i: usize = last.parse().map_err(|_| err(format!("{last:?} is not an index")))?;
            (i < items.len()).then(|| drop(items.remove(i))).ok_or_else(|| err(format!("index {i} out of range")))
        }
        _ => Err(err("the parent is a scalar".into())),
    }
}
