//! The quota as a tower layer: every upstream call waits for (or is refused) a slot in its
//! API's quota ([`crate::quota`]) before it is sent.
//!
//! The decision needs the request (its API and deadline), so it is made in `call`;
//! `poll_ready` only passes the inner service's readiness through. A 429 pauses the API for
//! its `Retry-After` (for every replica in shared mode) and the call is retried, through the
//! quota again, while its deadline allows: a 429 means Defender did not act on the request,
//! so even a POST is safe to resend.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::StatusCode;
use tower::{Layer, Service, ServiceExt};

use crate::{
    quota::Quota,
    upstream::{
        Api, Deadline, Error, QueueObserver, QuotaCaller, Request, Response, clone_request,
    },
};

/// Retries after upstream 429s, per call.
const MAX_THROTTLED_RETRIES: u32 = 3;
/// The pause when a 429 carries no `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Wraps a service in [`QuotaService`].
#[derive(Clone)]
pub struct QuotaLayer {
    quota: Arc<Quota>,
}

impl QuotaLayer {
    pub fn new(quota: Arc<Quota>) -> Self {
        Self { quota }
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = QuotaService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        QuotaService {
            inner,
            quota: self.quota.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct QuotaService<S> {
    inner: S,
    quota: Arc<Quota>,
}

impl<S> Service<Request> for QuotaService<S>
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
        let inner = std::mem::replace(&mut self.inner, clone);
        let quota = self.quota.clone();
        Box::pin(async move {
            let api = *request
                .extensions()
                .get::<Api>()
                .expect("DefenderClient tags every request with its Api");
            let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
            let observer = request.extensions().get::<QueueObserver>().cloned();
            let caller = request.extensions().get::<QuotaCaller>().cloned();
            let mut request = request;
            let mut retries = 0;
            loop {
                quota
                    .acquire(api, caller.as_ref(), deadline, observer.as_ref())
                    .await?;
                let next = clone_request(&request);
                let response = inner.clone().oneshot(request).await?;
                if response.status() != StatusCode::TOO_MANY_REQUESTS {
                    return Ok(response);
                }
                let wait =
                    crate::upstream::retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_AFTER);
                let resume = quota.clock().now() + wait;
                quota.pause(api, resume).await;
                let in_time = deadline.is_none_or(|d| resume < d);
                if retries >= MAX_THROTTLED_RETRIES || !in_time {
                    tracing::warn!(%api, wait_s = wait.as_secs(), "upstream quota exceeded; giving up");
                    return Ok(response);
                }
                retries += 1;
                tracing::warn!(%api, wait_s = wait.as_secs(), retries, "upstream quota exceeded; pausing this API and retrying");
                request = next;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Clock,
        metrics::Metrics,
        quota::{Limit, Limits, QuotaConfig},
    };
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;
    use tower::service_fn;

    fn quota(calls: u32, window: Duration) -> Arc<Quota> {
        let config = QuotaConfig {
            limits: Limits::uniform(vec![Limit { calls, window }]),
            max_wait: Duration::from_secs(3600),
            max_queue: 100,
        };
        Arc::new(Quota::local(&config, Clock::system(), Metrics::new()))
    }

    fn request(deadline: Option<Instant>) -> Request {
        let mut request = http::Request::new(Bytes::new());
        request.extensions_mut().insert(Api::GetAction);
        if let Some(deadline) = deadline {
            request.extensions_mut().insert(Deadline(deadline));
        }
        request
    }

    /// Answers 429 (Retry-After 30) `throttled` times, then 200; counts calls.
    fn upstream(throttled: usize) -> (crate::upstream::UpstreamService, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let service = service_fn(move |_request: Request| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = http::Response::new(Bytes::new());
                if n < throttled {
                    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    response.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("30"),
                    );
                }
                Ok::<_, Error>(response)
            }
        });
        (tower::util::BoxCloneSyncService::new(service), calls)
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_the_api_and_retries_after_retry_after() {
        let (inner, calls) = upstream(1);
        let service = QuotaLayer::new(quota(100, Duration::from_secs(60))).layer(inner);
        let start = Instant::now();
        let response = service.oneshot(request(None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_beyond_the_deadline_is_returned_not_retried() {
        let (inner, calls) = upstream(1);
        let service = QuotaLayer::new(quota(100, Duration::from_secs(60))).layer(inner);
        let deadline = Instant::now() + Duration::from_secs(10);
        let response = service.oneshot(request(Some(deadline))).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_storm_is_retried_a_bounded_number_of_times() {
        let (inner, calls) = upstream(usize::MAX);
        let service = QuotaLayer::new(quota(100, Duration::from_secs(60))).layer(inner);
        let response = service.oneshot(request(None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1 + MAX_THROTTLED_RETRIES as usize
        );
    }
}
