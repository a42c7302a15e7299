//! Body types shared by the listener, the gates and the forwarder.
//!
//! Bodies stream end to end; nothing here buffers. [`LimitedBody`] enforces the request body
//! cap while the bytes flow, so a large upload is refused without ever being held in memory.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// The error type carried by streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type that crosses module boundaries, in both directions.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body holding bytes already in memory (problem documents, demo answers).
pub fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body with nothing in it.
pub fn empty_body() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Raised when a streamed request body passes the configured cap.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the configured limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The cap that was crossed.
    pub limit: u64,
}

/// Remembers whether a [`LimitedBody`] tripped, so the code that sees the resulting upstream
/// error can answer `413` instead of `502`.
#[derive(Debug, Clone, Default)]
pub struct LimitTrip(Arc<AtomicBool>);

impl LimitTrip {
    /// True once the body crossed its cap.
    pub fn tripped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn trip(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Streams an inner body, failing as soon as more than `limit` bytes have passed.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    trip: LimitTrip,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `trip` is raised if the cap is crossed.
    pub fn new(inner: B, limit: u64, trip: LimitTrip) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
            trip,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.trip.trip();
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limited_body_passes_up_to_the_limit_and_trips_beyond() {
        let trip = LimitTrip::default();
        let ok = LimitedBody::new(Full::new(Bytes::from_static(b"12345")), 5, trip.clone());
        assert_eq!(ok.collect().await.unwrap().to_bytes().len(), 5);
        assert!(!trip.tripped());

        let over = LimitedBody::new(Full::new(Bytes::from_static(b"123456")), 5, trip.clone());
        let error = over.collect().await.unwrap_err();
        assert!(error.is::<BodyTooLarge>());
        assert!(trip.tripped());
    }
}
