//! The quota as a tower layer: every upstream call waits for (or is refused) a slot in its
//! API's quota ([`crate::quota`]) before it is sent.
//!
//! The decision needs the request (its API, deadline and caller), so it is made per call;
//! readiness only passes the inner service's through. What a 429 does (pause the API, send
//! again) is the retry policy's ([`super::retry`]), which sits above this layer so that a
//! resend takes a slot of its own.

use std::sync::Arc;

use tower::{Layer, Service, ServiceExt};

use super::step::{self, Step, Stepped};
use crate::{
    call::{Deadline, QueueObserver, QuotaCaller, Request, Response, api_of},
    quota::Quota,
    upstream::Error,
};

/// See the module docs.
#[derive(Clone)]
pub struct Admit {
    quota: Arc<Quota>,
}

impl Admit {
    pub fn layer<S>(quota: Arc<Quota>) -> impl Layer<S, Service = Stepped<Self, S>> + Clone {
        step::layer(Self { quota })
    }
}

impl Step for Admit {
    async fn call<S>(self, request: Request, next: S) -> Result<Response, Error>
    where
        S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let extensions = request.extensions();
        let deadline = extensions.get::<Deadline>().map(|d| d.0);
        self.quota
            .acquire(
                api_of(&request),
                extensions.get::<QuotaCaller>(),
                deadline,
                extensions.get::<QueueObserver>(),
            )
            .await?;
        next.oneshot(request).await
    }
}
