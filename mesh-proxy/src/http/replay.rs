//! Buffering a request body so a retry can send it again. Only bodies up to
//! a cap are buffered; a larger one streams on as it came, and its request
//! is not retried.

use crate::body::{self, Body, BoxError};
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A body read (up to a cap) for replay.
#[derive(Debug)]
pub enum Buffered {
    /// The whole body, replayable.
    Complete(Bytes),
    /// Too large (or with trailers): the original body, to send once.
    Streaming(Body),
}

/// Reads `body` if it fits in `limit` bytes.
pub async fn buffer(mut body: Body, limit: usize) -> Result<Buffered, BoxError> {
    if body.is_end_stream() {
        return Ok(Buffered::Complete(Bytes::new()));
    }
    if body.size_hint().lower() as usize > limit {
        return Ok(Buffered::Streaming(body));
    }
    let mut seen: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let too_big = frame.data_ref().is_some_and(|d| total + d.len() > limit);
        let trailers = frame.is_trailers();
        total += frame.data_ref().map_or(0, Bytes::len);
        seen.push_back(frame);
        if too_big || trailers {
            return Ok(Buffered::Streaming(body::boxed(Prefixed { prefix: seen, rest: body })));
        }
    }
    let mut all = BytesMut::with_capacity(total);
    for f in seen {
        if let Ok(d) = f.into_data() {
            all.extend_from_slice(&d);
        }
    }
    Ok(Buffered::Complete(all.freeze()))
}

/// Frames already read, then the rest of the body.
struct Prefixed {
    prefix: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.prefix.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(rest.lower() + buffered);
        if let Some(u) = rest.upper() {
            h.set_upper(u + buffered);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn chunks(parts: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p)))).collect();
        body::boxed(StreamBody::new(stream::iter(frames)))
    }

    #[tokio::test]
    async fn small_bodies_are_buffered_large_ones_stream_intact() {
        match buffer(chunks(&[b"ab", b"cd"]), 10).await.expect("ok") {
            Buffered::Complete(b) => assert_eq!(&b[..], b"abcd"),
            Buffered::Streaming(_) => panic!("fits"),
        }
        match buffer(chunks(&[b"abcdef", b"ghijkl", b"mn"]), 8).await.expect("ok") {
            Buffered::Streaming(b) => {
                let all = b.collect().await.expect("body").to_bytes();
                assert_eq!(&all[..], b"abcdefghijklmn", "nothing lost past the cap");
            }
            Buffered::Complete(_) => panic!("too big"),
        }
        assert!(matches!(buffer(body::empty(), 0).await, Ok(Buffered::Complete(b)) if b.is_empty()));
    }
}
