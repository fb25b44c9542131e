//! The gRPC test app: unary and bidirectional streaming echo.

use crate::pb::Msg;
use crate::pb::echo_server::{Echo, EchoServer};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

struct Svc {
    name: String,
}

#[tonic::async_trait]
impl Echo for Svc {
    async fn unary(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let mut m = req.into_inner();
        if m.text == "fail" {
            return Err(Status::failed_precondition("asked to fail"));
        }
        m.replica = self.name.clone();
        Ok(Response::new(m))
    }

    type BidiStream = Pin<Box<dyn futures_util::Stream<Item = Result<Msg, Status>> + Send>>;

    async fn bidi(&self, req: Request<Streaming<Msg>>) -> Result<Response<Self::BidiStream>, Status> {
        let name = self.name.clone();
        let out = req.into_inner().map(move |m| {
            m.map(|mut m| {
                m.replica = name.clone();
                m.seq += 1;
                m
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// A running gRPC app.
pub struct GrpcApp {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the gRPC echo app on an ephemeral loopback port.
pub async fn start(name: &str) -> GrpcApp {
    start_at(SocketAddr::from(([127, 0, 0, 1], 0)), name).await
}

/// [`start`] on a given address (for an app in its own network namespace).
pub async fn start_at(listen: SocketAddr, name: &str) -> GrpcApp {
    let listener = TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = EchoServer::new(Svc { name: name.to_string() });
    let task = tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder().serve_with_incoming(svc, incoming).await;
    });
    GrpcApp { addr, task }
}
