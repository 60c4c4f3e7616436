//! The quota as a tower layer: every upstream call waits for (or is refused) a slot in its
//! API's quota ([`crate::quota`]) before it is sent.
//!
//! The decision needs the request (its API, deadline and caller), so it is made in `call`;
//! `poll_ready` only passes the inner service's readiness through. What a 429 does (pause the
//! API, send again) is the retry policy's ([`super::retry`]), which sits above this layer so
//! that a resend takes a slot of its own.

use std::{
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tower::{Layer, Service, ServiceExt, layer::layer_fn};

use crate::{
    call::{Api, Deadline, QueueObserver, QuotaCaller, Request, Response},
    quota::Quota,
    upstream::Error,
};

/// See the module docs.
#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    quota: Arc<Quota>,
}

impl<S> Admit<S> {
    pub fn layer(quota: Arc<Quota>) -> impl Layer<S, Service = Self> + Clone {
        layer_fn(move |inner| Self {
            inner,
            quota: quota.clone(),
        })
    }
}

impl<S> Service<Request> for Admit<S>
where
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
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let quota = self.quota.clone();
        Box::pin(async move {
            let api = *request
                .extensions()
                .get::<Api>()
                .expect("DefenderClient tags every request with its Api");
            let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
            let observer = request.extensions().get::<QueueObserver>();
            let caller = request.extensions().get::<QuotaCaller>();
            quota.acquire(api, caller, deadline, observer).await?;
            inner.oneshot(request).await
        })
    }
}
