//! The admission webhook's protocol (`admission.k8s.io/v1` AdmissionReview)
//! around [`plan`](super::plan): a request body in, the review to answer
//! with out. Pure: the caller looks up the namespace and does the I/O.
//!
//! Pods that should not be injected are allowed unchanged; pods whose
//! annotations cannot be honoured, and requests that are not what an API
//! server sends, are refused with a message naming the problem (a pod the
//! webhook cannot read must not start unmeshed by accident).

use super::{InjectConfig, InjectError, NamespaceInfo, OptIn, Skip, plan};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Value, json};

/// What the API server asked.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionRequest {
    /// Echoed in the response.
    pub uid: String,
    /// The object's namespace (set by the API server even for generated names).
    pub namespace: String,
    /// `CREATE`, `UPDATE`, ...
    pub operation: String,
    /// The object's kind (`Pod` for the pods this webhook is registered for).
    pub kind: String,
    /// The object.
    pub object: Value,
}

/// A request body that is not an AdmissionReview the webhook can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an admission.k8s.io/v1 AdmissionReview request: {0}")]
pub struct AdmissionError(pub String);

/// What the webhook did, for its metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pod gets the proxy.
    Injected,
    /// Allowed unchanged, and why.
    Skipped(Skip),
    /// Not a pod creation: allowed unchanged.
    Ignored,
    /// Refused, and why.
    Denied(String),
}

impl Verdict {
    /// A label value: `injected`, `skipped`, `ignored` or `denied`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Injected => "injected",
            Verdict::Skipped(_) => "skipped",
            Verdict::Ignored => "ignored",
            Verdict::Denied(_) => "denied",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<RawRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest {
    uid: String,
    kind: RawKind,
    #[serde(default)]
    namespace: String,
    operation: String,
    #[serde(default)]
    object: Value,
}

#[derive(Deserialize)]
struct RawKind {
    kind: String,
}

/// Reads an AdmissionReview request body.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest, AdmissionError> {
    let review: Review = serde_json::from_slice(body).map_err(|e| AdmissionError(e.to_string()))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(AdmissionError(format!(
            "apiVersion {:?} kind {:?} (register the webhook with admissionReviewVersions: [v1])",
            review.api_version, review.kind
        )));
    }
    let r = review.request.ok_or_else(|| AdmissionError("no request".into()))?;
    Ok(AdmissionRequest {
        uid: r.uid,
        namespace: r.namespace,
        operation: r.operation,
        kind: r.kind.kind,
        object: r.object,
    })
}

/// Decides about `request` (whose namespace is `namespace`) and returns the
/// AdmissionReview to answer with.
pub fn review(request: &AdmissionRequest, namespace: &NamespaceInfo, config: &InjectConfig) -> (Value, Verdict) {
    let verdict_and_patch = decide(request, namespace, config);
    let mut response = json!({"uid": request.uid, "allowed": true});
    let verdict = match verdict_and_patch {
        Ok((verdict, Some(patch))) => {
            let bytes = serde_json::to_vec(&patch).unwrap_or_default();
            response["patchType"] = json!("JSONPatch");
            response["patch"] = serde_json::to_value(ByteString(bytes)).unwrap_or(Value::Null);
            verdict
        }
        Ok((verdict, None)) => verdict,
        Err(message) => {
            response["allowed"] = json!(false);
            response["status"] = json!({"code": 400, "reason": "BadRequest", "message": message});
            Verdict::Denied(message)
        }
    };
    (json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}), verdict)
}

type Decision = Result<(Verdict, Option<Vec<super::PatchOp>>), String>;

fn decide(request: &AdmissionRequest, namespace: &NamespaceInfo, config: &InjectConfig) -> Decision {
    if request.kind != "Pod" || request.operation != "CREATE" {
        return Ok((Verdict::Ignored, None));
    }
    let pod: Pod = serde_json::from_value(request.object.clone())
        .map_err(|e| format!("mesh injector: the pod cannot be read: {e}"))?;
    let Some(spec) = &pod.spec else { return Err("mesh injector: the pod has no spec".into()) };
    match plan(&pod.metadata, spec, namespace, config, OptIn::Marked) {
        Ok(Ok(injection)) => {
            // A pod without `metadata` decodes to empty metadata; the patch
            // must then create it before adding annotations under it.
            let mut ops = Vec::new();
            if request.object.get("metadata").is_none() {
                ops.push(super::PatchOp::Add { path: "/metadata".into(), value: json!({}) });
            }
            ops.extend(injection.patch("", &pod.metadata, spec));
            Ok((Verdict::Injected, Some(ops)))
        }
        Ok(Err(skip)) => Ok((Verdict::Skipped(skip), None)),
        Err(e @ InjectError { .. }) => Err(format!("mesh injector: {e}; fix the annotation or remove it")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::{INJECT_ANNOTATION, apply_patch};

    fn config() -> InjectConfig {
        InjectConfig::new("registry.test/mesh", "0.1.0", "mesh-system", "anchors".into())
    }

    fn body(operation: &str, kind: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                        "kind": {"group": "", "version": "v1", "kind": kind},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "shop", "operation": operation, "object": object}
        }))
        .expect("json")
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"},
               "spec": {"containers": [{"name": "web", "image": "web:1"}]}})
    }

    fn enabled() -> NamespaceInfo {
        let mut ns = NamespaceInfo { name: "shop".into(), ..Default::default() };
        ns.labels.insert(INJECT_ANNOTATION.into(), "enabled".into());
        ns
    }

    /// Catches a response the API server would reject or misapply: the uid
    /// not echoed, the patch not base64 JSON Patch, or a patch that does not
    /// apply to the pod it was computed for.
    #[test]
    fn an_opted_in_pod_is_answered_with_a_patch_that_applies() {
        let request = parse(&body("CREATE", "Pod", pod())).expect("parses");
        let (answer, verdict) = review(&request, &enabled(), &config());
        assert_eq!(verdict, Verdict::Injected);
        let response = &answer["response"];
        assert_eq!(response["uid"], json!("705ab4f5-6393-11e8-b7cc-42010a800002"));
        assert_eq!(response["allowed"], json!(true));
        assert_eq!(response["patchType"], json!("JSONPatch"));
        let bytes: ByteString = serde_json::from_value(response["patch"].clone()).expect("base64");
        let ops: Vec<super::super::PatchOp> = serde_json::from_slice(&bytes.0).expect("a JSON Patch");
        let mut object = pod();
        apply_patch(&mut object, &ops).expect("applies");
        assert_eq!(object.pointer("/spec/initContainers/1/restartPolicy"), Some(&json!("Always")));
    }

    /// Catches a webhook that patches what it must not (updates, other
    /// kinds, pods not opted in) or lets a bad annotation through.
    #[test]
    fn what_is_left_alone_and_what_is_refused() {
        let not_opted = NamespaceInfo { name: "shop".into(), ..Default::default() };
        let request = parse(&body("CREATE", "Pod", pod())).expect("parses");
        let (answer, verdict) = review(&request, &not_opted, &config());
        assert_eq!(verdict, Verdict::Skipped(Skip::NotEnabled));
        assert_eq!(answer["response"]["allowed"], json!(true));
        assert!(answer["response"].get("patch").is_none());

        let update = parse(&body("UPDATE", "Pod", pod())).expect("parses");
        assert_eq!(review(&update, &enabled(), &config()).1, Verdict::Ignored);

        let mut bad = pod();
        bad["metadata"]["annotations"] = json!({"config.mesh.dev/opaque-ports": "http"});
        let (answer, verdict) = review(&parse(&body("CREATE", "Pod", bad)).expect("parses"), &enabled(), &config());
        assert!(matches!(verdict, Verdict::Denied(m) if m.contains("config.mesh.dev/opaque-ports")));
        assert_eq!(answer["response"]["allowed"], json!(false));
        assert_eq!(answer["response"]["status"]["code"], json!(400));

        let unreadable = json!({"metadata": {}, "spec": {"containers": "web"}});
        let (_, verdict) = review(&parse(&body("CREATE", "Pod", unreadable)).expect("parses"), &enabled(), &config());
        assert!(matches!(verdict, Verdict::Denied(m) if m.contains("cannot be read")));
    }

    /// Catches a patch that cannot apply to a pod sent without `metadata`
    /// (found by the admission fuzz target): annotations were added under a
    /// `/metadata` that did not exist.
    #[test]
    fn a_pod_without_metadata_gets_a_patch_that_applies() {
        let bare = json!({"spec": {"containers": [{"name": "web", "image": "web:1"}]}});
        let request = parse(&body("CREATE", "Pod", bare.clone())).expect("parses");
        let (answer, verdict) = review(&request, &enabled(), &config());
        assert_eq!(verdict, Verdict::Injected);
        let bytes: ByteString = serde_json::from_value(answer["response"]["patch"].clone()).expect("base64");
        let ops: Vec<super::super::PatchOp> = serde_json::from_slice(&bytes.0).expect("a JSON Patch");
        let mut object = bare;
        apply_patch(&mut object, &ops).expect("applies");
        assert!(object.pointer("/metadata/annotations").is_some());
    }

    /// Catches a parser that accepts anything (garbage, v1beta1 reviews it
    /// cannot answer in kind, a review without a request) instead of saying so.
    #[test]
    fn requests_that_are_not_v1_reviews_are_errors() {
        assert!(parse(b"\x00\xff garbage").is_err());
        assert!(parse(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#).is_err());
        let err = parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#).expect_err("no request");
        assert!(err.to_string().contains("no request"));
    }
}
