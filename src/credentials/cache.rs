//! The access-token cache behind the outbound auth layer.
//!
//! The token is cached and refreshed ahead of its expiry, single-flight: however many calls
//! need a token at once, one request goes to the token endpoint and the rest wait for it. A
//! refresh that fails while the current token is still valid costs nothing: calls keep the
//! current token and the refresh is retried with capped, jittered backoff. A token the API
//! refused (401) is dropped with [`TokenCache::invalidate`], so the next call fetches anew.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tracing::Instrument;

use super::{Token, TokenError, TokenMetrics, TokenSource};
use crate::clock::Clock;

/// First retry delay after a failed refresh; doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between two refresh attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    current: Option<Token>,
    /// Consecutive failed fetches.
    failures: u32,
    /// No fetch before this instant (backoff), with the error that caused it.
    backoff: Option<(Instant, TokenError)>,
    /// A background refresh is running.
    refreshing: bool,
}

/// The shared token cache.
pub struct TokenCache {
    source: Box<dyn TokenSource>,
    clock: Clock,
    /// Refresh this long before expiry (capped at a quarter of a short token's lifetime).
    refresh_margin: Duration,
    metrics: TokenMetrics,
    state: Mutex<State>,
    /// Held while a fetch is in flight: the single flight.
    flight: tokio::sync::Mutex<()>,
}

impl TokenCache {
    pub fn new(
        source: Box<dyn TokenSource>,
        clock: Clock,
        refresh_margin: Duration,
        metrics: TokenMetrics,
    ) -> Self {
        Self {
            source,
            clock,
            refresh_margin,
            metrics,
            state: Mutex::new(State::default()),
            flight: tokio::sync::Mutex::new(()),
        }
    }

    /// A valid token: the cached one (refreshed in the background when due), or a fresh one.
    pub async fn token(self: &Arc<Self>) -> Result<SecretString, TokenError> {
        let now = self.clock.now();
        {
            let mut state = self.lock();
            if let Some(token) = &state.current
                && now < token.expires_at
            {
                let access = token.access_token.clone();
                let due = now >= self.refresh_at(token);
                let backing_off = state.backoff.as_ref().is_some_and(|(at, _)| now < *at);
                if due && !backing_off && !state.refreshing {
                    state.refreshing = true;
                    let cache = self.clone();
                    tokio::spawn(async move { cache.refresh_in_background().await });
                }
                return Ok(access);
            }
        }
        // No valid token: wait for the one fetch in flight, or make it.
        let _flight = self.flight.lock().await;
        if let Some(access) = self.valid() {
            return Ok(access);
        }
        if let Some((at, error)) = self.lock().backoff.clone()
            && self.clock.now() < at
        {
            return Err(error);
        }
        self.fetch().await
    }

    /// The cached token if it is valid now, without waiting for anything.
    pub fn valid_now(&self) -> Option<SecretString> {
        self.valid()
    }

    /// Forgets `rejected` if it is still the cached token (a newer one is kept).
    pub fn invalidate(&self, rejected: &SecretString) {
        let mut state = self.lock();
        if state
            .current
            .as_ref()
            .is_some_and(|t| t.access_token.expose_secret() == rejected.expose_secret())
        {
            state.current = None;
            // A refused token says nothing about the token endpoint: fetch at once.
            state.backoff = None;
            self.metrics.set_token_expiry(None);
        }
    }

    async fn refresh_in_background(&self) {
        // Even if the refresh panics, a later call may start another.
        struct Done<'a>(&'a TokenCache);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.lock().refreshing = false;
            }
        }
        let _done = Done(self);
        {
            let _flight = self.flight.lock().await;
            let still_due = self
                .lock()
                .current
                .as_ref()
                .is_none_or(|t| self.clock.now() >= self.refresh_at(t));
            if still_due && let Err(err) = self.fetch().await {
                tracing::warn!(error = %err, "refreshing the access token failed; the current token is still valid");
            }
        }
    }

    /// Fetches a token; the caller holds the flight.
    async fn fetch(&self) -> Result<SecretString, TokenError> {
        let kind = self.source.kind().as_str();
        // Only a real fetch gets a span; a cached token costs nothing. A background refresh has
        // no caller, so its span starts a trace of its own.
        let span = tracing::info_span!(
            "fetch access token",
            credential = kind,
            token.outcome = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        match self.source.fetch().instrument(span.clone()).await {
            Ok(token) => {
                span.record("token.outcome", "success");
                self.metrics.record_token_request(kind, "success");
                self.metrics.set_token_expiry(Some(token.expires_at));
                tracing::debug!(
                    lifetime_s = (token.expires_at - token.issued_at).as_secs(),
                    "fetched an access token"
                );
                let access = token.access_token.clone();
                let mut state = self.lock();
                state.current = Some(token);
                state.failures = 0;
                state.backoff = None;
                Ok(access)
            }
            Err(err) => {
                span.record("token.outcome", err.outcome());
                span.record("otel.status_description", err.to_string());
                self.metrics.record_token_request(kind, err.outcome());
                let mut state = self.lock();
                state.failures = state.failures.saturating_add(1);
                let delay = backoff(state.failures);
                state.backoff = Some((self.clock.now() + delay, err.clone()));
                Err(err)
            }
        }
    }

    fn refresh_at(&self, token: &Token) -> Instant {
        let lifetime = token.expires_at.saturating_duration_since(token.issued_at);
        token.expires_at - self.refresh_margin.min(lifetime / 4)
    }

    fn valid(&self) -> Option<SecretString> {
        let state = self.lock();
        let token = state.current.as_ref()?;
        (self.clock.now() < token.expires_at).then(|| token.access_token.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave a half-written state; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Capped exponential backoff with equal jitter: half the delay fixed, half random, so
/// replicas that failed together do not retry together.
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let delay = exp.min(BACKOFF_CAP);
    let half = delay / 2;
    let random = RandomState::new().hash_one(failures);
    half + half.mul_f64((random % 1_000_000) as f64 / 1_000_000.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{credentials::CredentialKind, metrics::Metrics};
    use std::{
        collections::VecDeque,
        future::Future,
        pin::Pin,
        sync::atomic::{AtomicUsize, Ordering},
    };

    /// A token endpoint on the paused clock: answers after 50 ms, either `token-N` valid for
    /// `lifetime`, or the next scripted error; counts requests.
    struct FakeEndpoint {
        requests: Arc<AtomicUsize>,
        /// How long a token request takes.
        delay: Duration,
        lifetime: Duration,
        clock: Clock,
        failures: Arc<Mutex<VecDeque<TokenError>>>,
        down: Arc<std::sync::atomic::AtomicBool>,
    }

    impl TokenSource for FakeEndpoint {
        fn kind(&self) -> CredentialKind {
            CredentialKind::ClientSecret
        }

        fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send + '_>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
                if self.down.load(Ordering::SeqCst) {
                    return Err(unavailable());
                }
                if let Some(err) = self.failures.lock().unwrap().pop_front() {
                    return Err(err);
                }
                let now = self.clock.now();
                Ok(Token {
                    access_token: SecretString::from(format!("token-{n}")),
                    issued_at: now,
                    expires_at: now + self.lifetime,
                })
            })
        }
    }

    fn unavailable() -> TokenError {
        TokenError::Unavailable {
            detail: "connection refused".into(),
            retry_after: None,
        }
    }

    pub(crate) struct Fixture {
        pub(crate) cache: Arc<TokenCache>,
        pub(crate) requests: Arc<AtomicUsize>,
        failures: Arc<Mutex<VecDeque<TokenError>>>,
        down: Arc<std::sync::atomic::AtomicBool>,
        metrics: Metrics,
    }

    pub(crate) fn fixture(lifetime: Duration) -> Fixture {
        slow_fixture(lifetime, Duration::from_millis(50))
    }

    /// A token endpoint that takes `delay` to answer.
    pub(crate) fn slow_fixture(lifetime: Duration, delay: Duration) -> Fixture {
        let clock = Clock::system();
        let endpoint = FakeEndpoint {
            requests: Arc::new(AtomicUsize::new(0)),
            delay,
            lifetime,
            clock,
            failures: Arc::default(),
            down: Arc::default(),
        };
        let (requests, failures, down) = (
            endpoint.requests.clone(),
            endpoint.failures.clone(),
            endpoint.down.clone(),
        );
        let mut registry = crate::metrics::registry();
        let tokens = TokenMetrics::register(&mut registry);
        let metrics = Metrics::new(registry);
        let cache = TokenCache::new(Box::new(endpoint), clock, Duration::from_secs(300), tokens);
        Fixture {
            cache: Arc::new(cache),
            requests,
            failures,
            down,
            metrics,
        }
    }

    async fn token(cache: &Arc<TokenCache>) -> Result<String, TokenError> {
        cache.token().await.map(|t| t.expose_secret().to_owned())
    }

    /// Lets spawned refreshes run to completion on the paused clock.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_calls_at_the_moment_of_expiry_make_one_token_request() {
        let f = fixture(Duration::from_secs(3600));
        assert_eq!(token(&f.cache).await.unwrap(), "token-1");
        tokio::time::advance(Duration::from_secs(3600)).await;
        let calls: Vec<_> = (0..1000)
            .map(|_| {
                let cache = f.cache.clone();
                tokio::spawn(async move { token(&cache).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), "token-2");
        }
        assert_eq!(f.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_ahead_of_expiry_in_the_background_and_never_serves_an_expired_token() {
        let f = fixture(Duration::from_secs(3600));
        let start = Instant::now();
        assert_eq!(token(&f.cache).await.unwrap(), "token-1");
        // Until 5 minutes before expiry the token is served and nothing is fetched...
        tokio::time::advance(Duration::from_secs(3600 - 301)).await;
        assert_eq!(token(&f.cache).await.unwrap(), "token-1");
        assert_eq!(f.requests.load(Ordering::SeqCst), 1);
        // ...inside the margin the caller still gets the valid token at once, and a refresh
        // starts behind it.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(token(&f.cache).await.unwrap(), "token-1");
        settle().await;
        assert_eq!(token(&f.cache).await.unwrap(), "token-2");
        assert_eq!(f.requests.load(Ordering::SeqCst), 2);
        // Every token handed out was valid when handed out.
        assert!(Instant::now() < start + Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn short_tokens_refresh_at_three_quarters_of_their_life() {
        let f = fixture(Duration::from_secs(60));
        token(&f.cache).await.unwrap();
        tokio::time::advance(Duration::from_secs(44)).await;
        token(&f.cache).await.unwrap();
        settle().await;
        assert_eq!(f.requests.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        token(&f.cache).await.unwrap();
        settle().await;
        assert_eq!(token(&f.cache).await.unwrap(), "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_outage_while_the_token_is_valid_costs_nothing() {
        let f = fixture(Duration::from_secs(3600));
        token(&f.cache).await.unwrap();
        f.down.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(3400)).await;
        // Refresh is due and failing: every call keeps succeeding with the current token,
        // and the refresh is retried with backoff, not on every call.
        for _ in 0..100 {
            assert_eq!(token(&f.cache).await.unwrap(), "token-1");
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        let attempts = f.requests.load(Ordering::SeqCst) - 1;
        assert!(
            (2..=10).contains(&attempts),
            "{attempts} refresh attempts in 50 s"
        );

        // After expiry, calls fail with a clear UNAVAILABLE-class error...
        tokio::time::advance(Duration::from_secs(200)).await;
        let err = token(&f.cache).await.unwrap_err();
        assert!(matches!(err, TokenError::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("token endpoint is unavailable"));
        // ...and succeed again once the endpoint is back (after the backoff).
        f.down.store(false, Ordering::SeqCst);
        tokio::time::advance(BACKOFF_CAP).await;
        assert!(token(&f.cache).await.unwrap().starts_with("token-"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_refresh_keeps_the_valid_token_too() {
        let f = fixture(Duration::from_secs(600));
        token(&f.cache).await.unwrap();
        f.failures.lock().unwrap().push_back(TokenError::Refused {
            kind: "client_secret",
            status: 401,
            error: "invalid_client".into(),
            aadsts: Some(7000222),
            hint: "expired".into(),
        });
        tokio::time::advance(Duration::from_secs(500)).await;
        assert_eq!(token(&f.cache).await.unwrap(), "token-1");
        settle().await;
        assert!(f.metrics.render().contains(
            r#"scan_gateway_token_requests_total{credential="client_secret",outcome="refused"} 1"#
        ));
        // The retry after the backoff succeeds.
        tokio::time::advance(Duration::from_secs(2)).await;
        token(&f.cache).await.unwrap();
        settle().await;
        assert_eq!(token(&f.cache).await.unwrap(), "token-3");
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_count_requests_and_show_the_time_left() {
        let f = fixture(Duration::from_secs(3600));
        token(&f.cache).await.unwrap();
        tokio::time::advance(Duration::from_secs(600)).await;
        let text = f.metrics.render();
        assert!(text.contains(
            r#"scan_gateway_token_requests_total{credential="client_secret",outcome="success"} 1"#
        ));
        assert!(
            text.contains("scan_gateway_access_token_ttl_seconds 3000.0"),
            "{text}"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        for failures in 1..40 {
            let delay = backoff(failures);
            let full = BACKOFF_BASE
                .saturating_mul(1 << (failures - 1).min(16))
                .min(BACKOFF_CAP);
            assert!(delay >= full / 2 && delay <= full, "{failures}: {delay:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_real_fetch_gets_a_span() {
        let (spans, _guard) = crate::telemetry::testing::install();
        let f = fixture(Duration::from_secs(3600));
        token(&f.cache).await.unwrap();
        token(&f.cache).await.unwrap();
        let fetches: Vec<_> = spans
            .finished()
            .into_iter()
            .filter(|s| s.name == "fetch access token")
            .collect();
        assert_eq!(fetches.len(), 1, "the cached token needs no fetch");
        let attr = |key| crate::telemetry::testing::attr(&fetches[0], key);
        assert_eq!(attr("credential").as_deref(), Some("client_secret"));
        assert_eq!(attr("token.outcome").as_deref(), Some("success"));
    }
}
