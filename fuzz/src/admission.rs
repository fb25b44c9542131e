//! The injector's admission webhook: any request body → an answer, never a
//! panic; and whenever the answer carries a patch, the patch applies to the
//! very pod it was computed for and yields an injected pod (a patch the API
//! server cannot apply would make the pod fail to be created).

use mesh_kube::inject::admission::{self, Verdict};
use mesh_kube::inject::{INJECT_ANNOTATION, InjectConfig, NamespaceInfo, PatchOp, already_injected, apply_patch};

/// One input: a request body as the webhook receives it. Bytes that are JSON
/// but not a review are also tried as the pod of a review.
pub fn run(data: &[u8]) {
    let config = InjectConfig::new("registry.test/mesh", "1.0.0", "mesh-system", "anchors".into());
    let mut namespace = NamespaceInfo { name: "shop".into(), ..Default::default() };
    namespace.labels.insert(INJECT_ANNOTATION.into(), "enabled".into());
    let request = match admission::parse(data) {
        Ok(r) => r,
        Err(_) => match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(object) => admission::AdmissionRequest {
                uid: "u".into(),
                namespace: "shop".into(),
                operation: "CREATE".into(),
                kind: "Pod".into(),
                object,
            },
            Err(_) => return,
        },
    };
    let (answer, verdict) = admission::review(&request, &namespace, &config);
    let response = &answer["response"];
    assert_eq!(response["uid"].as_str(), Some(request.uid.as_str()), "the uid is echoed");
    assert_eq!(response["allowed"].as_bool(), Some(!matches!(verdict, Verdict::Denied(_))));
    if let Some(patch) = response.get("patch") {
        let bytes: mesh_kube::api::k8s_openapi::ByteString =
            serde_json::from_value(patch.clone()).expect("the patch is base64");
        let ops: Vec<PatchOp> = serde_json::from_slice(&bytes.0).expect("the patch is a JSON Patch");
        let mut pod = request.object.clone();
        apply_patch(&mut pod, &ops).expect("the patch applies to the pod it was computed for");
        let pod: mesh_kube::api::k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(pod).expect("the patched pod is a pod");
        assert!(pod.spec.as_ref().is_some_and(already_injected), "the patched pod carries the proxy");
        assert_eq!(verdict, Verdict::Injected);
    }
}
