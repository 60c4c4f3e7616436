//! A response that holds a guard until its body's last frame (or until it is dropped, when
//! the caller goes away): what counts an open stream or a call in flight lets go before the
//! caller can see the end and open the next one.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::{Status, body::Body};

pin_project! {
    /// The handler's future; hands `guard` to the response body.
    pub struct GuardedFuture<F, G> {
        #[pin]
        inner: F,
        guard: Option<G>,
    }
}

impl<F, G> GuardedFuture<F, G> {
    pub fn new(inner: F, guard: Option<G>) -> Self {
        Self { inner, guard }
    }
}

impl<F, E, G> Future for GuardedFuture<F, G>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
    G: Send + 'static,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(match this.guard.take() {
            None => result,
            Some(guard) => result.map(|response| {
                response.map(|inner| {
                    Body::new(GuardedBody {
                        inner,
                        guard: Some(guard),
                    })
                })
            }),
        })
    }
}

pin_project! {
    struct GuardedBody<G> {
        #[pin]
        inner: Body,
        guard: Option<G>,
    }
}

impl<G> http_body::Body for GuardedBody<G> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let last = match &frame {
            Some(Ok(frame)) => frame.is_trailers(),
            Some(Err(_)) | None => true,
        };
        if last {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
