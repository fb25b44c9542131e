//! Sending one request on a connection: whether the peer never processed
//! it (so it may be resent, and the connection is retired), the request
//! handed back for that, and the HTTP/1 connection's return to the pool
//! once its response was read to the end.

use super::EndpointClient;
use super::state::ConnState;
use crate::body::{self, Body, BoxError};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

/// A request that failed on a connection.
#[derive(Debug)]
pub struct SendError {
    /// What failed.
    pub error: hyper::Error,
    /// The peer never processed the request: it was not written, or (HTTP/2)
    /// its stream was refused (`REFUSED_STREAM`) or lay above a graceful
    /// GOAWAY's last stream ID. Sending it again is safe for any method; the
    /// connection has been retired from the pool.
    pub unprocessed: bool,
    /// The request again, when it can be resent: the untouched request when
    /// it was not written, or a copy of one without a body that was refused.
    pub request: Option<Request<Body>>,
    /// Why it was not processed (`unsent`, `refused_stream`, `goaway`), for
    /// `http_requests_resent_total`; empty when it may have been.
    pub reason: &'static str,
}

/// A connection ready for one request.
#[derive(Debug)]
pub struct Conn(pub(super) ConnKind);

/// What a [`Conn`] holds.
#[derive(Debug)]
pub(super) enum ConnKind {
    /// A pooled HTTP/1 connection; it returns to the pool when the response
    /// body has been read to the end.
    Http1 {
        tx: http1::SendRequest<Body>,
        state: Arc<ConnState>,
        /// Where to return it (`None`: do not reuse, e.g. an upgrade).
        pool: Option<Weak<EndpointClient>>,
        /// Taken from the idle pool (it carried requests before).
        reused: bool,
    },
    /// A handle on the shared HTTP/2 connection.
    Http2 { tx: http2::SendRequest<Body>, state: Arc<ConnState> },
}

impl Conn {
    /// An idle HTTP/1 connection taken from the pool: the peer may have
    /// closed it as the request went out (the keep-alive race).
    pub fn reused(&self) -> bool {
        matches!(self.0, ConnKind::Http1 { reused: true, .. })
    }

    /// Sends `req`. When the peer never processed it, the error says so and
    /// (when it can be resent) hands it back; see [`SendError`]. `spare` is
    /// a copy of a bodyless request's head ([`head_of`]) if the caller made
    /// one; an HTTP/2 refusal hands it back (the pool makes its own
    /// otherwise, and leaves it in `spare`).
    pub async fn send(
        self,
        mut req: Request<Body>,
        spare: &mut Option<Request<Body>>,
    ) -> Result<Response<Body>, SendError> {
        match self.0 {
            ConnKind::Http1 { mut tx, state, pool, .. } => {
                *req.version_mut() = http::Version::HTTP_11;
                let rsp = tx.try_send_request(req).await.map_err(|mut e| {
                    let request = e.take_message();
                    if request.is_some() {
                        state.retire();
                    }
                    let reason = if request.is_some() { "unsent" } else { "" };
                    SendError { unprocessed: request.is_some(), request, error: e.into_error(), reason }
                })?;
                let upgraded = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                Ok(match pool.filter(|_| !upgraded) {
                    Some(pool) => rsp.map(|b| body::boxed(PooledBody { inner: b, ret: Some((tx, state, pool)) })),
                    None => rsp.map(body::boxed),
                })
            }
            ConnKind::Http2 { mut tx, state } => {
                *req.version_mut() = http::Version::HTTP_2;
                // A request without a body can be rebuilt if its stream is
                // refused; one with a body is handed back only unsent (its
                // body was consumed otherwise).
                let bodyless = http_body::Body::is_end_stream(req.body());
                if bodyless && spare.is_none() {
                    *spare = Some(head_of(&req));
                }
                let rsp = tx.try_send_request(req).await.map_err(|mut e| {
                    let request = e.take_message();
                    let error = e.into_error();
                    let reason = if request.is_some() { "unsent" } else { h2_unprocessed(&error).unwrap_or("") };
                    let unprocessed = !reason.is_empty();
                    if unprocessed {
                        state.retire();
                    }
                    let request = request.or_else(|| if unprocessed && bodyless { spare.take() } else { None });
                    SendError { unprocessed, request, error, reason }
                })?;
                Ok(rsp.map(body::boxed))
            }
        }
    }
}

/// A copy of `req` with an empty body.
pub fn head_of(req: &Request<Body>) -> Request<Body> {
    let mut r = Request::new(body::empty());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    *r.extensions_mut() = req.extensions().clone();
    r
}

/// Whether an HTTP/2 request failed without the peer processing it:
/// cancelled before it went out, its stream refused (`REFUSED_STREAM`,
/// RFC 9113 §8.7), or above the last stream ID of a graceful GOAWAY
/// (`NO_ERROR`; a GOAWAY with an error code resets every stream, processed
/// or not, so those are not safe). Says which: `unsent`, `refused_stream`
/// or `goaway`.
fn h2_unprocessed(error: &hyper::Error) -> Option<&'static str> {
    if error.is_canceled() {
        return Some("unsent");
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            if !e.is_remote() {
                return None;
            }
            if e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some("refused_stream");
            }
            if e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR) {
                return Some("goaway");
            }
            return None;
        }
        source = e.source();
    }
    None
}

/// A response body that returns its HTTP/1 connection to the pool once read
/// to the end. Dropped early, the connection is not reused (hyper closes it).
struct PooledBody {
    inner: Incoming,
    ret: Option<(http1::SendRequest<Body>, Arc<ConnState>, Weak<EndpointClient>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((tx, state, pool)) = self.ret.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(tx, state);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.ret = None,
            _ => {}
        }
        res.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
