//! A Kubernetes client that holds back one request, for tests that must
//! stop a component exactly while that request is in flight: the request is
//! sent to the real API server only when the test opens the hold, from a
//! task of its own (as bytes already on the wire would be applied whether
//! or not the sender still waits for the answer).

use mesh_kube::api::Client;
use mesh_kube::api::kube::client::Body;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The held request's progress, and the switch that lets it go.
#[derive(Clone)]
pub struct Hold {
    /// Set when the request to hold was made (the component is waiting on it).
    seen: watch::Sender<bool>,
    /// Set by [`Hold::open`]: the request goes to the API server.
    open: watch::Sender<bool>,
    /// Set when the API server has answered it (its effect is in place).
    answered: watch::Sender<bool>,
}

impl Hold {
    /// Waits until the request to hold has been made.
    pub async fn seen(&self) {
        let _ = self.seen.subscribe().wait_for(|v| *v).await;
    }

    /// Lets the held request go to the API server.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until the API server has answered the held request.
    pub async fn answered(&self) {
        let _ = self.answered.subscribe().wait_for(|v| *v).await;
    }
}

/// `inner`, except that the first request `hold` matches (method, path)
/// waits for [`Hold::open`]; `default_namespace` as `inner`'s.
pub fn holding_first(
    inner: Client,
    default_namespace: &str,
    hold: impl Fn(&http::Method, &str) -> bool + Send + Sync + 'static,
) -> (Client, Hold) {
    let handle =
        Hold { seen: watch::Sender::new(false), open: watch::Sender::new(false), answered: watch::Sender::new(false) };
    let taken = Arc::new(AtomicBool::new(false));
    let (matches, state) = (Arc::new(hold), handle.clone());
    let service = tower::service_fn(move |request: http::Request<Body>| {
        let (inner, taken, matches, state) = (inner.clone(), taken.clone(), matches.clone(), state.clone());
        async move {
            if !matches(request.method(), request.uri().path()) || taken.swap(true, Ordering::SeqCst) {
                return inner.send(request).await.map_err(BoxError::from);
            }
            state.seen.send_replace(true);
            let sent = tokio::spawn(async move {
                let _ = state.open.subscribe().wait_for(|v| *v).await;
                let answer = inner.send(request).await;
                state.answered.send_replace(true);
                answer
            });
            sent.await.map_err(BoxError::from)?.map_err(BoxError::from)
        }
    });
    (Client::new(service, default_namespace), handle)
}
