//! Credentials before quota: a call first waits for a valid access token, and only then
//! takes its slot in the quota. A token fetch can take seconds (at start, at every expiry,
//! after a 401); were the slot taken first, calls admitted in one quota window would reach
//! Defender in the next, and two windows' worth could land in one. The token travels with the
//! request, so the auth layer below the quota never waits for one: a call can wait in the quota
//! queue past its token's expiry (a short-lived token, a long queue), and a fetch then, after
//! the slot was taken, would send the call late. A token that expired meanwhile is answered 401,
//! and the retry policy sends again (with a new token, then a new slot).

use std::sync::Arc;

use secrecy::SecretString;
use tower::{Layer, Service, ServiceExt};

use super::step::{self, Step, Stepped};
use crate::{
    call::{Request, Response},
    credentials::TokenCache,
    upstream::Error,
};

/// See the module docs.
#[derive(Clone)]
pub struct TokenReady {
    tokens: Arc<TokenCache>,
}

/// The token a request got before its quota slot (a request extension).
#[derive(Clone)]
pub(super) struct ReadyToken(pub(super) SecretString);

impl TokenReady {
    pub fn layer<S>(tokens: Arc<TokenCache>) -> impl Layer<S, Service = Stepped<Self, S>> + Clone {
        step::layer(Self { tokens })
    }
}

impl Step for TokenReady {
    async fn call<S>(self, mut request: Request, next: S) -> Result<Response, Error>
    where
        S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let token = self.tokens.token().await?;
        request.extensions_mut().insert(ReadyToken(token));
        next.oneshot(request).await
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
        call::Api,
        clock::Clock,
        credentials::cache::tests::slow_fixture,
        outbound::{Admit, Authorize},
        quota::{Limit, Limits, Quota, QuotaConfig, QuotaMetrics},
    };

    /// The most sends in any `window` (sends sorted).
    fn busiest(sends: &[Instant], window: Duration) -> usize {
        (0..sends.len())
            .map(|i| {
                sends[i..]
                    .iter()
                    .take_while(|&&t| t < sends[i] + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// 10 calls per 5 s; a token endpoint that takes 2 s and issues tokens of `lifetime`;
    /// `n` calls at once. Returns the sorted send times and the token requests made.
    async fn send_at_once(n: usize, lifetime: Duration) -> (Vec<Instant>, usize) {
        let window = Duration::from_secs(5);
        let quota = Arc::new(Quota::local(
            &QuotaConfig {
                limits: Limits::uniform(vec![Limit { calls: 10, window }]),
                max_wait: Duration::from_secs(60),
                max_queue: 100,
                margin: Duration::ZERO,
                background_floor: crate::quota::DEFAULT_BACKGROUND_FLOOR,
            },
            Clock::system(),
            QuotaMetrics::default(),
        ));
        let tokens = slow_fixture(lifetime, Duration::from_secs(2));
        let sends = Arc::new(Mutex::new(Vec::new()));
        let log = sends.clone();
        let http = service_fn(move |_request: Request| {
            log.lock().unwrap().push(Instant::now());
            async { Ok::<_, Error>(http::Response::new(Bytes::new())) }
        });
        let stack = ServiceBuilder::new()
            .layer(TokenReady::layer(tokens.cache.clone()))
            .layer(Admit::layer(quota))
            .layer(Authorize::layer(tokens.cache.clone()))
            .service(http);
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let stack = stack.clone();
                let mut request = http::Request::new(Bytes::new());
                request.extensions_mut().insert(Api::RunScan);
                tokio::spawn(stack.oneshot(request))
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let mut sends = sends.lock().unwrap().clone();
        sends.sort();
        let requests = tokens.requests.load(std::sync::atomic::Ordering::SeqCst);
        (sends, requests)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_token_fetch_never_puts_two_windows_of_calls_in_one() {
        let (sends, token_requests) = send_at_once(20, Duration::from_secs(3600)).await;
        assert_eq!(sends.len(), 20);
        assert_eq!(
            busiest(&sends, Duration::from_secs(5)),
            10,
            "sends at {sends:?}"
        );
        assert_eq!(token_requests, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_that_expires_while_calls_wait_for_their_slot_never_delays_their_send() {
        // Tokens live 4 s (from 2 s): the second ten wait for the window until 7 s, past the
        // expiry. Fetching then (2 s) would send them at 9 s, and the third ten, admitted at
        // 12 s, would land in the same window.
        let (sends, _) = send_at_once(30, Duration::from_secs(4)).await;
        assert_eq!(sends.len(), 30);
        assert_eq!(
            busiest(&sends, Duration::from_secs(5)),
            10,
            "sends at {sends:?}"
        );
    }
}
