//! The decision over TokenReview statuses shaped as kube-apiserver 1.37
//! returns them (the error texts are its own), and over pods.

use super::*;
use serde_json::json;

const AUD: &str = "mesh-identity";

fn status(v: serde_json::Value) -> TokenReviewStatus {
    serde_json::from_value(v).expect("a TokenReviewStatus")
}

fn bound() -> serde_json::Value {
    json!({
        "authenticated": true,
        "user": {
            "username": "system:serviceaccount:shop:books",
            "uid": "0d4b6a1e-6a43-4e0e-9a55-0c6e9b0f3d21",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
            "extra": {
                "authentication.kubernetes.io/credential-id": ["JTI=6e0b0f5c-3d2a-4d1b-9f0e-1c2d3e4f5a6b"],
                "authentication.kubernetes.io/pod-name": ["books-7d9c8b6f5-x2x9k"],
                "authentication.kubernetes.io/pod-uid": ["5d7f2a5c-1e0a-4f0b-8b1a-2f5d0e7c9a11"]
            }
        },
        "audiences": ["mesh-identity"]
    })
}

fn workload() -> Workload {
    Workload {
        namespace: "shop".into(),
        service_account: "books".into(),
        pod_name: "books-7d9c8b6f5-x2x9k".into(),
        pod_uid: "5d7f2a5c-1e0a-4f0b-8b1a-2f5d0e7c9a11".into(),
    }
}

fn pod(v: serde_json::Value) -> Pod {
    let mut base = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "books-7d9c8b6f5-x2x9k", "namespace": "shop", "uid": "5d7f2a5c-1e0a-4f0b-8b1a-2f5d0e7c9a11"},
        "spec": {"serviceAccountName": "books", "containers": [{"name": "app", "image": "books"}]},
        "status": {"phase": "Running"}
    });
    merge(&mut base, v);
    serde_json::from_value(base).expect("a Pod")
}

fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// Catches accepting a token without its pod binding, for another
/// audience, of a user, or one the API server refused (each with its reason).
#[test]
fn reviews_prove_a_pod_bound_service_account_or_say_why_not() {
    assert_eq!(workload_from_review(&status(bound()), AUD), Ok(workload()));

    let reason = |v: serde_json::Value| workload_from_review(&status(v), AUD).expect_err("refused").reason();
    // What the API server answers for a token minted for another audience.
    let other = json!({"user": {}, "error":
        "[invalid bearer token, token audiences [\"other\"] is invalid for the target audiences [\"mesh-identity\"], unknown]"});
    assert_eq!(reason(other), "wrong_audience");
    // Authenticated, but not for our audience (an API server without audience checks).
    let mut implicit = bound();
    implicit["audiences"] = json!(["https://kubernetes.default.svc.cluster.local"]);
    assert_eq!(reason(implicit), "wrong_audience");
    // Its pod was deleted: the API server invalidates the token.
    let deleted = json!({"user": {}, "error": "[invalid bearer token, service account token has been invalidated]"});
    assert_eq!(reason(deleted), "token_invalidated");
    let garbage = json!({"user": {}, "error": "[invalid bearer token, square/go-jose: compact JWS format must have three parts]"});
    assert_eq!(reason(garbage), "not_authenticated");
    assert_eq!(reason(json!({})), "not_authenticated");
    let mut unbound = bound();
    unbound["user"]["extra"] = json!({"authentication.kubernetes.io/credential-id": ["JTI=x"]});
    assert_eq!(reason(unbound), "not_pod_bound");
    let mut no_uid = bound();
    no_uid["user"]["extra"]["authentication.kubernetes.io/pod-uid"] = json!([]);
    assert_eq!(reason(no_uid), "not_pod_bound");
    for user in [
        "alice@example.com",
        "system:serviceaccount:shop",
        "system:serviceaccount::books",
        "system:serviceaccount:a:b:c",
    ] {
        let mut v = bound();
        v["user"]["username"] = json!(user);
        assert_eq!(reason(v), "not_service_account", "{user}");
    }
}

/// Catches honouring a token whose pod is gone, replaced, terminating,
/// finished, or runs as another ServiceAccount.
#[test]
fn only_the_live_pod_the_token_was_minted_for_passes() {
    let w = workload();
    assert_eq!(check_pod(&w, Some(&pod(json!({})))), Ok(()));
    assert_eq!(check_pod(&w, Some(&pod(json!({"status": {"phase": "Pending"}})))), Ok(()));
    let reason = |p: Option<Pod>| check_pod(&w, p.as_ref()).expect_err("refused").reason();
    assert_eq!(reason(None), "pod_gone");
    let replaced = reason(Some(pod(json!({"metadata": {"uid": "another"}}))));
    assert_eq!(replaced, "pod_gone");
    let terminating = pod(json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}));
    assert_eq!(reason(Some(terminating)), "pod_terminating");
    assert_eq!(reason(Some(pod(json!({"status": {"phase": "Succeeded"}})))), "pod_finished");
    assert_eq!(reason(Some(pod(json!({"status": {"phase": "Failed"}})))), "pod_finished");
    assert_eq!(reason(Some(pod(json!({"spec": {"serviceAccountName": "reviews"}})))), "pod_account_mismatch");
    // A pod without a ServiceAccount runs as `default`.
    let mut default = w.clone();
    default.service_account = "default".into();
    let mut p = pod(json!({}));
    p.spec.as_mut().expect("spec").service_account_name = None;
    assert_eq!(check_pod(&default, Some(&p)), Ok(()));
}

/// The refusal says what to do, not only what went wrong.
#[test]
fn refusals_name_the_fix() {
    let e = Refusal::NotPodBound("shop/books".into()).to_string();
    assert!(e.contains("projected"), "{e}");
    let e = Refusal::WrongAudience { want: AUD.into(), detail: "x".into() }.to_string();
    assert!(e.contains("--token-audience") && e.contains(AUD), "{e}");
}

/// Catches garbage (or a huge body) reaching the API server as a TokenReview.
#[test]
fn only_token_shaped_input_is_reviewed() {
    assert!(is_token_shaped("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl-_"));
    for bad in ["", "abc", "a.b", "a..c", "a.b.c.d", "a.b.c d", "a.b.c+/=", "mesh1.e30.AA\n"] {
        assert!(!is_token_shaped(bad), "{bad:?}");
    }
    let huge = format!("a.{}.c", "b".repeat(MAX_TOKEN));
    assert!(!is_token_shaped(&huge));
    assert_eq!(Refusal::Malformed.reason(), "malformed_token");
}
