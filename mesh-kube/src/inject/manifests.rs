//! `meshctl inject` / `uninject`: Kubernetes YAML in (several documents, or a
//! `List`), the same YAML out with each workload's pod template injected (or
//! cleaned) by the webhook's own [`plan`](super::plan). Objects that hold no
//! pod template pass through unchanged. Comments are not kept.

use super::{InjectConfig, InjectError, NamespaceInfo, OptIn, apply_patch, plan, uninject_patch};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

/// Inject or remove the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Add the proxy (unless the object says `mesh.dev/inject: disabled`).
    Inject,
    /// Remove what injection added.
    Uninject,
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Kind/name`.
    pub object: String,
    /// `None` when changed; why not otherwise.
    pub skipped: Option<String>,
}

/// Input that cannot be injected, located by document and object.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML.
    #[error("the input is not valid YAML: {0}")]
    Yaml(String),
    /// A pod template that is not a valid pod spec.
    #[error("document {document} ({object}): its pod template is not a valid pod: {message}")]
    Template {
        /// 1-based document number.
        document: usize,
        /// `Kind/name`.
        object: String,
        /// The decoder's message.
        message: String,
    },
    /// An annotation injection cannot honour.
    #[error("document {document} ({object}): {source}")]
    Annotation {
        /// 1-based document number.
        document: usize,
        /// `Kind/name`.
        object: String,
        /// Which annotation, and what it accepts.
        #[source]
        source: InjectError,
    },
    /// The patch did not apply (a malformed object).
    #[error("document {document} ({object}): {message}")]
    Patch {
        /// 1-based document number.
        document: usize,
        /// `Kind/name`.
        object: String,
        /// Why.
        message: String,
    },
    /// The output could not be written as YAML.
    #[error("cannot write YAML: {0}")]
    Render(String),
}

/// Where a kind keeps its pod template (a JSON Pointer to the object that has
/// `metadata` and `spec`), or `None` for kinds without one.
pub fn template_root(api_version: &str, kind: &str) -> Option<&'static str> {
    match (api_version, kind) {
        ("v1", "Pod") => Some(""),
        ("v1", "ReplicationController") => Some("/spec/template"),
        ("apps/v1", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => Some("/spec/template"),
        ("batch/v1", "Job") => Some("/spec/template"),
        ("batch/v1", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Rewrites every document of `yaml`; returns the new YAML and one outcome per
/// object with a pod template.
pub fn rewrite(yaml: &str, mode: Mode, config: &InjectConfig) -> Result<(String, Vec<Outcome>), ManifestError> {
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    docs.retain(|d| !d.is_null());
    let mut outcomes = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        let document = i + 1;
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            if let Some(Value::Array(items)) = doc.get_mut("items") {
                for item in items {
                    outcomes.extend(rewrite_object(item, document, mode, config)?);
                }
            }
        } else {
            outcomes.extend(rewrite_object(doc, document, mode, config)?);
        }
    }
    let out = serde_saphyr::to_string_multiple(&docs).map_err(|e| ManifestError::Render(e.to_string()))?;
    Ok((out, outcomes))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn rewrite_object(
    obj: &mut Value,
    document: usize,
    mode: Mode,
    config: &InjectConfig,
) -> Result<Option<Outcome>, ManifestError> {
    let Some(root) = template_root(text(obj, "apiVersion"), text(obj, "kind")) else { return Ok(None) };
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let object = format!("{}/{}", text(obj, "kind"), text(&meta, "name"));
    let namespace = NamespaceInfo { name: text(&meta, "namespace").to_string(), ..Default::default() };
    let template = obj.pointer_mut(root).ok_or_else(|| ManifestError::Template {
        document,
        object: object.clone(),
        message: format!("{root} is missing"),
    })?;
    if let Value::Object(map) = template {
        map.entry("metadata").or_insert_with(|| Value::Object(Default::default()));
    }
    let decode = |field: &str| template.get(field).cloned().unwrap_or(Value::Object(Default::default()));
    let invalid = |message: String| ManifestError::Template { document, object: object.clone(), message };
    let pod_meta: ObjectMeta = serde_json::from_value(decode("metadata")).map_err(|e| invalid(e.to_string()))?;
    let spec: PodSpec = serde_json::from_value(decode("spec")).map_err(|e| invalid(e.to_string()))?;
    let ops = match mode {
        Mode::Inject => match plan(&pod_meta, &spec, &namespace, config, OptIn::Unless) {
            Ok(Ok(injection)) => injection.patch("", &pod_meta, &spec),
            Ok(Err(skip)) => return Ok(Some(Outcome { object, skipped: Some(skip.to_string()) })),
            Err(source) => return Err(ManifestError::Annotation { document, object, source }),
        },
        Mode::Uninject => {
            let ops = uninject_patch("", &pod_meta, &spec);
            if ops.is_empty() {
                return Ok(Some(Outcome { object, skipped: Some("not injected".into()) }));
            }
            ops
        }
    };
    apply_patch(template, &ops).map_err(|e| ManifestError::Patch {
        document,
        object: object.clone(),
        message: e.to_string(),
    })?;
    if let Value::Object(map) = template {
        // A template written without metadata gets it back without (the
        // injection had to create it to hold the annotation).
        if map.get("metadata").is_some_and(|m| m.as_object().is_some_and(|m| m.is_empty())) {
            map.remove("metadata");
        }
    }
    Ok(Some(Outcome { object, skipped: None }))
}
