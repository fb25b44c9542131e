//! HTTP/1.1 upgrades (WebSocket and the like): once both sides have
//! switched protocols, the two connections are spliced byte for byte.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Joins the client's and the server's upgraded connections in a task.
pub fn splice(client: OnUpgrade, server: OnUpgrade) {
    tokio::spawn(async move {
        let (client, server) = match tokio::try_join!(client, server) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut server = TokioIo::new(server);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
