//! Runtime pieces shared by every mesh binary: the admin HTTP server, the
//! shutdown signal, reconnect backoff, logging set-up and process metrics.
//!
//! Nothing here knows about proxies or registries; it is the plumbing both the
//! data plane and the control plane stand on.

pub mod admin;
pub mod backoff;
pub mod duration;
pub mod gauge;
pub mod listener;
pub mod process;
pub mod shutdown;
pub mod trace;

/// An error and its causes on one line, each cause once: a cause whose text
/// its parent already quotes is not repeated.
pub fn render_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner detail")]
    struct Inner;

    #[test]
    fn causes_are_not_repeated() {
        assert_eq!(super::render_error(&Outer(Inner)), "outer: inner detail");
        let io = std::io::Error::other("disk full");
        assert_eq!(super::render_error(&io), "disk full");
    }
}
