//! The shape the asynchronous outbound layers share. A [`Step`] gets the request and the
//! service below it and answers; [`Stepped`] is the tower service around it, which hands the
//! ready inner service to the step and keeps a fresh clone for the next call.

use std::{
    future::Future,
    mem,
    pin::Pin,
    task::{Context, Poll},
};

use tower::{Layer, Service, layer::layer_fn};

use crate::{
    call::{Request, Response},
    upstream::Error,
};

/// One outbound layer's work for one request; `next` is the stack below it, ready.
pub trait Step: Clone + Send + Sync + 'static {
    fn call<S>(
        self,
        request: Request,
        next: S,
    ) -> impl Future<Output = Result<Response, Error>> + Send
    where
        S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
        S::Future: Send + 'static;
}

/// A layer that runs `step` in front of the service it wraps.
pub fn layer<M: Step, S>(step: M) -> impl Layer<S, Service = Stepped<M, S>> + Clone {
    layer_fn(move |inner| Stepped {
        step: step.clone(),
        inner,
    })
}

/// The service of a [`Step`].
#[derive(Clone)]
pub struct Stepped<M, S> {
    step: M,
    inner: S,
}

impl<M, S> Service<Request> for Stepped<M, S>
where
    M: Step,
    S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The ready service goes into the future; a fresh clone stays behind for the next call.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        Box::pin(self.step.clone().call(request, inner))
    }
}
