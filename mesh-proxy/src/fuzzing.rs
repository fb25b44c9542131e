//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature; not
//! part of the proxy's API). They run the proxy's own code on bytes from a
//! peer: protocol detection, the ClientHello's ALPN, and the HTTP/1 server
//! with the proxy's limits and request-head handling.

use crate::body::{self, Body};
use crate::detect::Protocol;
use crate::http::server::{ServerSettings, serve};
use crate::io::{Activity, Clock};
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use crate::detect::{H2_PREFACE, MAX_SNIFF, Protocol as Detected, Verdict, classify, client_hello_alpns};
pub use crate::tls::is_mesh_hello;
/// The mesh's ALPN ids, so a fuzz oracle that lists them by hand can be
/// checked against them.
pub use mesh_identity::tls::MESH_ALPNS;

/// One request head as the proxy handled it.
#[derive(Debug)]
pub struct Head {
    /// As hyper parsed it, before the proxy touched it.
    pub received: Parts,
    /// As the proxy forwards it (hop-by-hop headers gone).
    pub forwarded: Parts,
    /// Whether the proxy took it for gRPC.
    pub grpc: bool,
    /// Whether the proxy forwards it as a protocol upgrade.
    pub upgrading: bool,
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("fuzzing: cannot build a tokio runtime: {e}"));
}

/// Serves `input` as the bytes a client sent on one HTTP/1 connection (then
/// closed its side), with the proxy's server and its default limits, and
/// returns every request head hyper accepted, after the proxy's own head
/// handling ([`crate::http::proxy::prepare`]). Each request's body is read,
/// and the request answered 204.
pub fn http1_heads(input: &[u8]) -> Vec<Head> {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let sink = heads.clone();
    let svc = tower::service_fn(move |req: Request<Incoming>| {
        let received = req.clone_parts();
        let p = crate::http::proxy::prepare(req);
        let (forwarded, body) = p.req.into_parts();
        let head = Head { received, forwarded, grpc: p.grpc, upgrading: p.upgrade.is_some() };
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(head);
        let mut rsp = Response::new(body::empty());
        *rsp.status_mut() = http::StatusCode::NO_CONTENT;
        // Read the body as forwarding would, so the next pipelined request is served.
        async move {
            let _ = http_body_util::BodyExt::collect(body).await;
            Ok::<Response<Body>, Infallible>(rsp)
        }
    });
    let (io, state) = Script::new(input);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let activity = Activity::new(Clock::new());
            let (_trigger, shutdown) = mesh_core::shutdown::channel();
            let settings = ServerSettings::default();
            let served = serve(io, Protocol::Http1, svc, &settings, activity, shutdown);
            let mut served = std::pin::pin!(served);
            // Drive the server; once it waits for bytes the input no longer has, the client
            // has finished: the connection reads end of file (after every pipelined request).
            std::future::poll_fn(|cx| {
                loop {
                    if served.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    if !s.starved || s.eof {
                        return Poll::Pending;
                    }
                    s.eof = true;
                    s.waker.take();
                }
            })
            .await;
        });
    });
    let mut heads = heads.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *heads)
}

/// A copy of a request's head (hyper's `Parts` is not `Clone`).
trait CloneParts {
    fn clone_parts(&self) -> Parts;
}

impl<B> CloneParts for Request<B> {
    fn clone_parts(&self) -> Parts {
        let mut r = Request::new(());
        *r.method_mut() = self.method().clone();
        *r.uri_mut() = self.uri().clone();
        *r.version_mut() = self.version();
        *r.headers_mut() = self.headers().clone();
        r.into_parts().0
    }
}

/// A client connection that sends `input`, then nothing until the server is
/// starved for bytes, then end of file; what the server writes is dropped.
struct Script {
    input: Vec<u8>,
    pos: usize,
    state: Arc<Mutex<ScriptState>>,
}

#[derive(Default)]
struct ScriptState {
    /// The server asked for bytes past the input.
    starved: bool,
    /// The client closed its side.
    eof: bool,
    waker: Option<Waker>,
}

impl Script {
    fn new(input: &[u8]) -> (Self, Arc<Mutex<ScriptState>>) {
        let state = Arc::new(Mutex::new(ScriptState::default()));
        (Self { input: input.to_vec(), pos: 0, state: state.clone() }, state)
    }
}

impl AsyncRead for Script {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let rest = &self.input[self.pos..];
        if !rest.is_empty() {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.eof {
            return Poll::Ready(Ok(()));
        }
        s.starved = true;
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Script {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
