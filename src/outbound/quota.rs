//! The quota as a tower layer: every upstream call waits for (or is refused) a slot in its
//! API's quota ([`crate::quota`]) before it is sent.
//!
//! The decision needs the request (its API, deadline and caller), so it is made per call;
//! readiness only passes the inner service's through. What a 429 does (pause the API, send
//! again) is the retry policy's ([`super::retry`]), which sits above this layer so that a
//! resend takes a slot of its own.

use std::sync::Arc;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::step::{self, Step, Stepped};
use crate::{
    call::{Api, Deadline, QueueObserver, QuotaCaller, Request, Response, api_of},
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
        let api = api_of(&request);
        let admitted = self
            .quota
            .acquire(
                api,
                extensions.get::<QuotaCaller>(),
                deadline,
                extensions.get::<QueueObserver>(),
            )
            .await?;
        let answer = Answer {
            quota: &self.quota,
            api,
            admitted,
        };
        let response = next.oneshot(request).await;
        drop(answer);
        response
    }
}

/// Tells the quota when the call was answered when dropped: after the answer, or when the
/// caller lets go midway (the cut is then the latest moment known).
struct Answer<'a> {
    quota: &'a Quota,
    api: Api,
    admitted: Instant,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        let now = self.quota.clock().now();
        self.quota.answered(self.api, self.admitted, now);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use bytes::Bytes;
    use tokio::time::Instant;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::*;
    use crate::{
        clock::Clock,
        quota::{Limit, Limits, QuotaConfig, QuotaMetrics},
    };

    #[tokio::test(start_paused = true)]
    async fn a_call_that_reaches_upstream_late_counts_from_when_it_could_have_arrived() {
        // 10 calls per 5 s with a 250 ms margin; the first connection takes 2 s to open, so
        // the first ten reach upstream at 2 s. Counted from their admission (0 s), the next ten
        // would go at 5.25 s: twenty within one window of upstream's own clock.
        let window = Duration::from_secs(5) + Duration::from_millis(250);
        let quota = Arc::new(Quota::local(
            &QuotaConfig {
                limits: Limits::uniform(vec![Limit { calls: 10, window }]),
                max_wait: Duration::from_secs(60),
                max_queue: 100,
                margin: Duration::from_millis(250),
                background_floor: crate::quota::DEFAULT_BACKGROUND_FLOOR,
            },
            Clock::system(),
            QuotaMetrics::default(),
        ));
        let start = Instant::now();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let log = arrivals.clone();
        let http = service_fn(move |_request: Request| {
            let log = log.clone();
            async move {
                tokio::time::sleep_until(start + Duration::from_secs(2)).await;
                log.lock().unwrap().push(Instant::now());
                Ok::<_, Error>(http::Response::new(Bytes::new()))
            }
        });
        let stack = ServiceBuilder::new()
            .layer(Admit::layer(quota))
            .service(http);
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let mut request = http::Request::new(Bytes::new());
                request.extensions_mut().insert(Api::RunScan);
                tokio::spawn(stack.clone().oneshot(request))
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let mut arrivals = arrivals.lock().unwrap().clone();
        arrivals.sort();
        let upstream_window = Duration::from_secs(5);
        let busiest = (0..arrivals.len())
            .map(|i| {
                arrivals[i..]
                    .iter()
                    .take_while(|&&t| t < arrivals[i] + upstream_window)
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert_eq!(busiest, 10, "arrivals at {arrivals:?}");
    }
}
