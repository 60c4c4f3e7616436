//! The one retry policy of upstream calls: which failed exchanges are sent again, how often,
//! and when. Every resend goes through the quota again.
//!
//! | answer | what happened upstream | resend |
//! |---|---|---|
//! | 429 | nothing: Defender refused to act | after `Retry-After` (at most [an hour](crate::call::MAX_RETRY_AFTER); the API is paused for every call, and every replica in shared mode), at most [`MAX_THROTTLED`] times, only if that is before the caller's deadline |
//! | 401 | nothing: the token was refused | once, with a fresh token (the auth layer forgot the refused one) |
//! | connection failed | nothing: the request never left | once |
//! | anything else: a timeout, a reset, a 5xx, a garbled answer | **unknown**: a POST may have created a scan | never |
//!
//! The last row is the rule the whole gateway relies on: a request whose outcome is unknown
//! is never re-sent blindly. `scans` resolves an unknown scan start by looking for the scan it
//! may have created, and only a scan that certainly does not exist is requested again.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::StatusCode;
use tower::{Layer, Service, ServiceExt};

use super::{
    metrics::UpstreamMetrics,
    step::{self, Step, Stepped},
};
use crate::{
    call::{Deadline, Request, Response, api_of, clone_request, instant_after, retry_after},
    quota::Quota,
    upstream::{Error, TransportKind},
};

/// Resends after upstream 429s, per call.
pub const MAX_THROTTLED: u32 = 3;
/// The pause when a 429 carries no `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What to do with an exchange's result.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Hand it to the caller.
    Return,
    /// Defender throttled the call: pause the API this long, then send again.
    Throttled(Duration),
    /// Nothing reached Defender (or it acted on nothing): send again now.
    Resend,
}

/// Resends made so far for one call, per reason.
#[derive(Debug, Default)]
struct Attempts {
    throttled: u32,
    unauthorized: u32,
    unconnected: u32,
}

impl Attempts {
    /// The policy of the module docs, for one result (`now` reads a `Retry-After` date).
    fn decide(
        &mut self,
        result: &Result<Response, Error>,
        now: impl FnOnce() -> SystemTime,
    ) -> Decision {
        match result {
            Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                if self.throttled >= MAX_THROTTLED {
                    return Decision::Return;
                }
                self.throttled += 1;
                let wait = retry_after(response.headers(), now());
                Decision::Throttled(wait.unwrap_or(DEFAULT_RETRY_AFTER))
            }
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                once(&mut self.unauthorized)
            }
            Err(Error::Transport {
                kind: TransportKind::Connect,
                ..
            }) => once(&mut self.unconnected),
            // Every other answer is final, and every other failure is final here: its outcome
            // is unknown (or it is the gateway's own refusal).
            _ => Decision::Return,
        }
    }
}

fn once(count: &mut u32) -> Decision {
    if *count > 0 {
        return Decision::Return;
    }
    *count += 1;
    Decision::Resend
}

/// See the module docs.
#[derive(Clone)]
pub struct Retry {
    quota: Arc<Quota>,
    metrics: UpstreamMetrics,
}

impl Retry {
    pub fn layer<S>(
        quota: Arc<Quota>,
        metrics: UpstreamMetrics,
    ) -> impl Layer<S, Service = Stepped<Self, S>> + Clone {
        step::layer(Self { quota, metrics })
    }
}

impl Step for Retry {
    async fn call<S>(self, mut request: Request, next: S) -> Result<Response, Error>
    where
        S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let Retry { quota, metrics } = self;
        let api = api_of(&request);
        let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
        let mut attempts = Attempts::default();
        loop {
            let again = clone_request(&request);
            let result = next.clone().oneshot(request).await;
            if matches!(&result, Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS) {
                metrics.record_throttled(api.as_str());
            }
            match attempts.decide(&result, || quota.clock().utc().into()) {
                Decision::Return => return result,
                Decision::Resend => {
                    tracing::info!(%api, "nothing reached Defender; sending the call once more");
                }
                Decision::Throttled(wait) => {
                    let resume = instant_after(quota.clock().now(), wait);
                    quota.pause(api, resume).await;
                    if deadline.is_some_and(|d| resume >= d) {
                        tracing::warn!(%api, wait_s = wait.as_secs(), "upstream quota exceeded; giving up");
                        return result;
                    }
                    tracing::warn!(%api, wait_s = wait.as_secs(), retries = attempts.throttled, "upstream quota exceeded; pausing this API and retrying");
                }
            }
            request = again;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        call::Api,
        clock::Clock,
        credentials::cache::tests::fixture,
        outbound::{auth::Authorize, quota::Admit},
        quota::{Limit, Limits, QuotaConfig, QuotaMetrics},
    };
    use bytes::Bytes;
    use http::header::AUTHORIZATION;
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    use tokio::time::Instant;
    use tower::{ServiceBuilder, service_fn};

    fn quota(calls: u32, window: Duration) -> Arc<Quota> {
        let config = QuotaConfig {
            limits: Limits::uniform(vec![Limit { calls, window }]),
            max_wait: Duration::from_secs(3600),
            max_queue: 100,
            margin: Duration::ZERO,
            background_floor: crate::quota::DEFAULT_BACKGROUND_FLOOR,
        };
        Arc::new(Quota::local(
            &config,
            Clock::system(),
            QuotaMetrics::default(),
        ))
    }

    fn request(deadline: Option<Instant>) -> Request {
        let mut request = http::Request::new(Bytes::new());
        request.extensions_mut().insert(Api::GetAction);
        if let Some(deadline) = deadline {
            request.extensions_mut().insert(Deadline(deadline));
        }
        request
    }

    /// Retry over the quota over `inner`, as in the stack.
    fn stack<S>(quota: Arc<Quota>, inner: S) -> crate::upstream::UpstreamService
    where
        S: Service<Request, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        tower::util::BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(Retry::layer(quota.clone(), UpstreamMetrics::default()))
                .layer(Admit::layer(quota))
                .service(inner),
        )
    }

    /// Answers 429 (Retry-After 30) `throttled` times, then 200; counts calls.
    fn upstream(throttled: usize) -> (crate::upstream::UpstreamService, Arc<AtomicUsize>) {
        throttling(throttled, "30")
    }

    /// Answers 429 with `Retry-After: retry_after` `throttled` times, then 200; counts calls.
    fn throttling(
        throttled: usize,
        retry_after: &'static str,
    ) -> (crate::upstream::UpstreamService, Arc<AtomicUsize>) {
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
                        http::HeaderValue::from_static(retry_after),
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
        let service = stack(quota(100, Duration::from_secs(60)), inner);
        let start = Instant::now();
        let response = service.oneshot(request(None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_beyond_the_deadline_is_returned_not_retried() {
        let (inner, calls) = upstream(1);
        let service = stack(quota(100, Duration::from_secs(60)), inner);
        let deadline = Instant::now() + Duration::from_secs(10);
        let response = service.oneshot(request(Some(deadline))).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_retry_after_pauses_the_api_an_hour_not_forever() {
        // u64::MAX seconds once overflowed `now + wait` and the panic killed the watcher.
        let (inner, calls) = throttling(1, "18446744073709551615");
        let service = stack(quota(100, Duration::from_secs(60)), inner);
        let start = Instant::now();
        let response = service.oneshot(request(None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(Instant::now() - start, crate::call::MAX_RETRY_AFTER);

        // With a deadline inside the clamped pause, the 429 is the answer, at once.
        let (inner, calls) = throttling(1, "18446744073709551615");
        let service = stack(quota(100, Duration::from_secs(60)), inner);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let response = service.oneshot(request(Some(deadline))).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(Instant::now(), start);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_storm_is_retried_a_bounded_number_of_times() {
        let (inner, calls) = upstream(usize::MAX);
        let service = stack(quota(100, Duration::from_secs(60)), inner);
        let response = service.oneshot(request(None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(calls.load(Ordering::SeqCst), 1 + MAX_THROTTLED as usize);
    }

    /// Fails every call with `kind`; counts calls.
    fn failing(kind: TransportKind) -> (crate::upstream::UpstreamService, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let service = service_fn(move |_request: Request| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                Err::<Response, _>(Error::Transport {
                    api: Api::RunScan,
                    kind,
                    detail: "test".into(),
                })
            }
        });
        (tower::util::BoxCloneSyncService::new(service), calls)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_connected_is_sent_once_more() {
        let (inner, calls) = failing(TransportKind::Connect);
        let service = stack(quota(100, Duration::from_secs(60)), inner);
        assert!(service.oneshot(request(None)).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_whose_outcome_is_unknown_is_never_sent_again() {
        for kind in [TransportKind::Timeout, TransportKind::Other] {
            let (inner, calls) = failing(kind);
            let service = stack(quota(100, Duration::from_secs(60)), inner);
            assert!(service.oneshot(request(None)).await.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{kind}");
        }
    }

    /// Retry over auth over `inner`: the 401 path of the stack.
    fn authorized<S>(
        f: &crate::credentials::cache::tests::Fixture,
        inner: S,
    ) -> impl Service<Request, Response = Response, Error = Error>
    where
        S: Service<Request, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        ServiceBuilder::new()
            .layer(Retry::layer(
                quota(100, Duration::from_secs(60)),
                UpstreamMetrics::default(),
            ))
            .layer(Authorize::layer(f.cache.clone()))
            .service(inner)
    }

    fn get() -> Request {
        request(None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_refreshes_the_token_and_retries_once() {
        let f = fixture(Duration::from_secs(3600));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let inner = service_fn(move |request: Request| {
            let auth = request.headers()[AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_owned();
            log.lock().unwrap().push(auth.clone());
            async move {
                let mut response = http::Response::new(Bytes::new());
                if auth == "Bearer token-1" {
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                }
                Ok::<_, Error>(response)
            }
        });
        let service = authorized(&f, inner);
        let response = service.oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(*seen.lock().unwrap(), ["Bearer token-1", "Bearer token-2"]);
        assert_eq!(f.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_401_is_returned_not_retried_forever() {
        let f = fixture(Duration::from_secs(3600));
        let inner = service_fn(|_request: Request| async {
            let mut response = http::Response::new(Bytes::new());
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            Ok::<_, Error>(response)
        });
        let service = authorized(&f, inner);
        let response = service.oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(f.requests.load(Ordering::SeqCst), 2);
    }
}
