//! The injector: a mutating admission webhook on its own TLS port (8443).
//! It presents the control plane's serving certificate (issued by the mesh's
//! issuer, so the webhook configuration's `caBundle` is the trust anchors),
//! reads the pod's namespace from the API server and answers with
//! `mesh_kube::inject::admission::review` — the same injection `meshctl
//! inject` applies offline.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::listener::CountedListener;
use mesh_core::shutdown::Shutdown;
use mesh_identity::tls::Credentials;
use mesh_kube::inject::InjectConfig;
use mesh_kube::inject::admission::{self, Verdict};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;
use std::time::Duration;

/// The largest AdmissionReview accepted (the API server's own object limit is 3 MiB).
const MAX_BODY: usize = 4 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server gives a webhook 10 s by default; the namespace lookup gets part of it.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the injector adds to pods, besides the trust anchors (read live from
/// the identity authority at each request, so a rotation reaches new pods).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Image registry of the proxy image.
    pub registry: String,
    /// The proxy image's tag.
    pub proxy_version: String,
    /// The mesh's namespace.
    pub mesh_namespace: String,
    /// The control plane's address as proxies dial it; its Service in the
    /// mesh's namespace when `None`.
    pub control_plane: Option<String>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: &'static str,
}

/// `injector_admissions_total{verdict}`.
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics(Family<VerdictLabel, Counter>);

impl WebhookMetrics {
    /// Registers the family.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "injector_admissions",
            "Pod admissions answered by the injector, by verdict (injected, skipped, ignored, denied)",
            self.0.clone(),
        );
    }
}

#[derive(Clone)]
struct State {
    client: mesh_kube::api::Client,
    settings: Arc<WebhookSettings>,
    identity: Arc<dyn Fn() -> MeshIdentity + Send + Sync>,
    metrics: WebhookMetrics,
}

/// What the injector reads live from the identity authority at each request.
#[derive(Debug, Clone)]
pub struct MeshIdentity {
    /// The trust anchors (PEM) injected proxies verify the control plane with.
    pub anchors_pem: String,
    /// The trust domain of the identities they ask for.
    pub trust_domain: String,
}

/// Serves the webhook on `listener` until `shutdown`.
pub async fn serve(
    listener: CountedListener,
    creds: Arc<Credentials>,
    client: mesh_kube::api::Client,
    settings: WebhookSettings,
    identity: Arc<dyn Fn() -> MeshIdentity + Send + Sync>,
    metrics: WebhookMetrics,
    mut shutdown: Shutdown,
) {
    let config = match creds.server_config(false, &[b"http/1.1"]) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the injector cannot serve TLS");
            return;
        }
    };
    let state = State { client, settings: Arc::new(settings), identity, metrics };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, remote) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "injector accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.triggered() => break,
        };
        let config = config.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, mesh_identity::tls::accept(config, tcp)).await {
                Ok(Ok(accepted)) => accepted.into_parts().0,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "injector TLS handshake failed"),
                Err(_) => return tracing::debug!(%remote, "injector TLS handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%remote, error = %e, "injector connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != "/inject" {
        return respond(StatusCode::NOT_FOUND, "text/plain", "the injector answers POST /inject\n");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return respond(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", format!("cannot read the request: {e}\n"));
        }
    };
    let request = match admission::parse(&body) {
        Ok(r) => r,
        Err(e) => return respond(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    let namespace =
        match tokio::time::timeout(LOOKUP_TIMEOUT, mesh_kube::inject::namespace(&state.client, &request.namespace))
            .await
        {
            Ok(Ok(ns)) => ns,
            // Fail closed: without the namespace the opt-in is unknown, and a
            // pod that should be meshed must not start unmeshed.
            Ok(Err(e)) => {
                return deny(
                    state,
                    &request,
                    format!("mesh injector: cannot read namespace {}: {e}", request.namespace),
                );
            }
            Err(_) => {
                return deny(
                    state,
                    &request,
                    format!("mesh injector: reading namespace {} timed out", request.namespace),
                );
            }
        };
    let s = &state.settings;
    let identity = (state.identity)();
    let mut config = InjectConfig::new(&s.registry, &s.proxy_version, &s.mesh_namespace, identity.anchors_pem);
    config.trust_domain = identity.trust_domain;
    if let Some(cp) = &s.control_plane {
        config.control_plane = cp.clone();
    }
    let (answer, verdict) = admission::review(&request, &namespace, &config);
    record(state, &request, &verdict);
    respond(StatusCode::OK, "application/json", answer.to_string())
}

fn deny(state: &State, request: &admission::AdmissionRequest, message: String) -> Response<Full<Bytes>> {
    let verdict = Verdict::Denied(message.clone());
    record(state, request, &verdict);
    let answer = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": request.uid, "allowed": false,
                     "status": {"code": 500, "reason": "InternalError", "message": message}}
    });
    respond(StatusCode::OK, "application/json", answer.to_string())
}

fn record(state: &State, request: &admission::AdmissionRequest, verdict: &Verdict) {
    state.metrics.0.get_or_create(&VerdictLabel { verdict: verdict.label() }).inc();
    match verdict {
        Verdict::Injected => tracing::info!(namespace = %request.namespace, "pod injected"),
        Verdict::Skipped(why) => tracing::debug!(namespace = %request.namespace, %why, "pod not injected"),
        Verdict::Ignored => {}
        Verdict::Denied(why) => tracing::warn!(namespace = %request.namespace, %why, "pod refused"),
    }
}
