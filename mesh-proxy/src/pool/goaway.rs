//! Noticing an HTTP/2 peer's GOAWAY as its frame is read, to retire the
//! connection (and open its replacement) before a request is tried on it.

use super::state::ConnState;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 frame type of GOAWAY (RFC 9113 §6.8).
const GOAWAY: u8 = 0x7;

/// An HTTP/2 client connection's I/O that notices the peer's GOAWAY as its
/// frame is read: hyper reports a closing connection only once a new request
/// is tried on it, so without this every pooled handle would look usable
/// until then (and requests sent meanwhile come back). It follows frame
/// headers (9 bytes: length, type, flags, stream) and skips payloads; the
/// server's side of a connection starts directly with a frame (SETTINGS).
pub(super) struct GoAwayWatch<T> {
    io: T,
    state: Arc<ConnState>,
    on_goaway: Option<Box<dyn FnOnce() + Send + Sync>>,
    header: [u8; 9],
    filled: usize,
    skip: usize,
}

impl<T> std::fmt::Debug for GoAwayWatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoAwayWatch").field("state", &self.state).finish_non_exhaustive()
    }
}

impl<T> GoAwayWatch<T> {
    pub(super) fn new(io: T, state: Arc<ConnState>, on_goaway: Box<dyn FnOnce() + Send + Sync>) -> Self {
        Self { io, state, on_goaway: Some(on_goaway), header: [0; 9], filled: 0, skip: 0 }
    }

    /// Follows the frames in `data`, the next bytes the peer sent.
    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (self.header.len() - self.filled).min(data.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == self.header.len() {
                self.filled = 0;
                let [a, b, c, kind, ..] = self.header;
                self.skip = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                if kind == GOAWAY {
                    self.state.retire();
                    if let Some(f) = self.on_goaway.take() {
                        f();
                    }
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GoAwayWatch<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.scan(&buf.filled()[before..]);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GoAwayWatch<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    fn watch() -> (GoAwayWatch<()>, Arc<ConnState>, Arc<AtomicUsize>) {
        let state = Arc::new(ConnState::for_tests(Duration::from_secs(60), None));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let hook = Box::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
        });
        (GoAwayWatch::new((), state.clone(), hook), state, calls)
    }

    /// GOAWAY is found whatever the read boundaries, including inside a
    /// frame header, and a payload that contains the GOAWAY type byte (a
    /// DATA frame here) is skipped, not mistaken for a frame. Catches a
    /// scanner that looks at the first byte of each read.
    #[test]
    fn goaway_is_noticed_across_read_boundaries_and_only_in_frame_headers() {
        let mut stream = frame(0x4, &[]); // SETTINGS
        stream.extend(frame(0x0, &[0, 0, 0, 7, 0, 0, 0, 7, 0, 0, 0, 7, 7, 7])); // DATA full of 7s
        stream.extend(frame(0x6, &[0; 8])); // PING
        let before = stream.len();
        stream.extend(frame(GOAWAY, &[0, 0, 0, 1, 0, 0, 0, 0]));
        for chunk in [1, 2, 5, 9, 10, 64] {
            let (mut w, state, calls) = watch();
            for piece in stream[..before].chunks(chunk) {
                w.scan(piece);
            }
            assert!(state.reusable(None), "chunk {chunk}: GOAWAY seen where there is none");
            for piece in stream[before..].chunks(chunk) {
                w.scan(piece);
            }
            assert!(!state.reusable(None), "chunk {chunk}: GOAWAY missed");
            w.scan(&frame(GOAWAY, &[0; 8]));
            assert_eq!(calls.load(Ordering::Relaxed), 1, "chunk {chunk}: the replacement is opened once");
        }
    }
}
