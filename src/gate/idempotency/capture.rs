//! Bounded reading of the two bodies an idempotent exchange must hold in memory.
//!
//! The request body must be read whole before anything is stored: its hash is part of the
//! fingerprint, and a reused key with a different body must be answered `422` before the
//! backend sees it. The response body is read up to the cache limit so it can be stored
//! before the client sees it; past the limit, what was read is sent on ahead of the rest of
//! the stream ([`PrefixedBody`]) and the answer is simply not kept.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{BodyTooLarge, BoxError, ProxyBody};

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// More than the limit.
    #[error("the request body exceeds the limit")]
    TooLarge,
    /// The client stopped sending, or sent a malformed body.
    #[error("the request body ended abnormally")]
    Incomplete,
}

/// Reads a request body of at most `limit` bytes.
pub async fn read_request(mut body: ProxyBody, limit: u64) -> Result<Bytes, RequestBodyError> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            if error.is::<BodyTooLarge>() {
                RequestBodyError::TooLarge
            } else {
                RequestBodyError::Incomplete
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if (buffer.len() + data.len()) as u64 > limit {
                return Err(RequestBodyError::TooLarge);
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

/// A response body read up to the cache limit.
pub enum Captured {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// More than the limit: the bytes read so far and the unread rest.
    Exceeded {
        /// Everything read so far (a little past the limit: the last frame is kept whole).
        prefix: Bytes,
        /// The rest of the stream.
        rest: ProxyBody,
    },
}

/// Reads `body` until it ends or passes `limit` bytes. Trailers are not kept.
pub async fn capture_response(mut body: ProxyBody, limit: u64) -> Result<Captured, BoxError> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buffer.extend_from_slice(&data);
            if buffer.len() as u64 > limit {
                return Ok(Captured::Exceeded {
                    prefix: buffer.freeze(),
                    rest: body,
                });
            }
        }
    }
    Ok(Captured::Whole(buffer.freeze()))
}

/// Bytes already read, followed by the rest of their stream.
pub struct PrefixedBody {
    prefix: Option<Bytes>,
    rest: ProxyBody,
}

impl PrefixedBody {
    /// Sends `prefix`, then everything `rest` yields.
    pub fn new(prefix: Bytes, rest: ProxyBody) -> Self {
        Self {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            rest,
        }
    }
}

impl Body for PrefixedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let ahead = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = SizeHint::new();
        // Upper first: a lower bound may never exceed the upper bound in force.
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(ahead));
        }
        hint.set_lower(rest.lower().saturating_add(ahead));
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::body::{full_body, LimitTrip, LimitedBody};

    /// A body that yields each part as its own frame.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> ProxyBody {
        Chunks(parts.iter().map(|p| Bytes::from_static(p)).collect()).boxed()
    }

    #[tokio::test]
    async fn request_bodies_are_read_up_to_the_limit() {
        let body = read_request(chunks(&[b"ab", b"cd"]), 4).await.unwrap();
        assert_eq!(&body[..], b"abcd");
        let over = read_request(chunks(&[b"ab", b"cde"]), 4).await;
        assert!(matches!(over, Err(RequestBodyError::TooLarge)));
        // The listener's own cap surfaces as too large as well.
        let capped = LimitedBody::new(full_body("abcdef"), 3, LimitTrip::default()).boxed();
        assert!(matches!(
            read_request(capped, 10).await,
            Err(RequestBodyError::TooLarge)
        ));
    }

    #[tokio::test]
    async fn responses_over_the_limit_keep_every_byte_in_order() {
        match capture_response(chunks(&[b"ab", b"cd"]), 4).await.unwrap() {
            Captured::Whole(body) => assert_eq!(&body[..], b"abcd"),
            Captured::Exceeded { .. } => panic!("within the limit"),
        }
        match capture_response(chunks(&[b"ab", b"cde", b"fg"]), 4)
            .await
            .unwrap()
        {
            Captured::Whole(_) => panic!("over the limit"),
            Captured::Exceeded { prefix, rest } => {
                assert_eq!(&prefix[..], b"abcde");
                let body = PrefixedBody::new(prefix, rest);
                assert_eq!(body.size_hint().lower(), 5);
                let all = body.collect().await.unwrap().to_bytes();
                assert_eq!(&all[..], b"abcdefg");
            }
        }
    }
}
