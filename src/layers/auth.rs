//! Adds `Authorization: Bearer <token>` to every upstream request.
//!
//! The token is cached and refreshed ahead of its expiry, single-flight: however many calls
//! need a token at once, one request goes to the token endpoint and the rest wait for it. An
//! upstream 401 drops the token (the tenant may have revoked it early), fetches a fresh one and
//! retries the call once.

use std::{
    future::Future,
    mem,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderValue, StatusCode, header::AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use tower::{Layer, Service, ServiceExt};

use crate::{
    clock::Clock,
    upstream::{
        Error, Request, Response,
        token::{Token, TokenError, TokenSource},
    },
};

/// The shared token cache.
pub struct TokenCache {
    source: Box<dyn TokenSource>,
    clock: Clock,
    /// Refresh this long before expiry (capped at a quarter of a short token's lifetime).
    refresh_margin: Duration,
    current: Mutex<Option<Token>>,
    /// Held while a refresh is in flight: the single flight.
    refreshing: tokio::sync::Mutex<()>,
}

impl TokenCache {
    pub fn new(source: Box<dyn TokenSource>, clock: Clock, refresh_margin: Duration) -> Self {
        Self {
            source,
            clock,
            refresh_margin,
            current: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// A token that is not due for refresh, fetching one if needed.
    pub async fn token(&self) -> Result<SecretString, TokenError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _flight = self.refreshing.lock().await;
        // Whoever held the flight before us may have refreshed already.
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let token = self.source.fetch().await?;
        tracing::debug!(
            lifetime_s = (token.expires_at - token.issued_at).as_secs(),
            "fetched an access token"
        );
        let access = token.access_token.clone();
        *self.lock() = Some(token);
        Ok(access)
    }

    /// Forgets `rejected` if it is still the cached token (a newer one is kept).
    pub fn invalidate(&self, rejected: &SecretString) {
        let mut current = self.lock();
        if current
            .as_ref()
            .is_some_and(|t| t.access_token.expose_secret() == rejected.expose_secret())
        {
            *current = None;
        }
    }

    fn fresh(&self) -> Option<SecretString> {
        let current = self.lock();
        let token = current.as_ref()?;
        let lifetime = token.expires_at.saturating_duration_since(token.issued_at);
        let margin = self.refresh_margin.min(lifetime / 4);
        (self.clock.now() + margin < token.expires_at).then(|| token.access_token.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Token>> {
        // A panic while holding this lock cannot leave a half-written token; keep serving.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Wraps a service in [`Auth`].
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Arc<TokenCache>,
}

impl AuthLayer {
    pub fn new(tokens: Arc<TokenCache>) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Arc<TokenCache>,
}

impl<S> Service<Request> for Auth<S>
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
        // The ready service goes into the future; a fresh clone stays behind for the next call.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let tokens = self.tokens.clone();
        Box::pin(async move {
            let retry = clone_request(&request);
            let token = tokens.token().await?;
            let response = inner.clone().oneshot(authorize(request, &token)?).await?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            tracing::info!("the Defender API refused the access token; fetching a new one");
            tokens.invalidate(&token);
            let token = tokens.token().await?;
            inner.oneshot(authorize(retry, &token)?).await
        })
    }
}

fn authorize(mut request: Request, token: &SecretString) -> Result<Request, Error> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(|_| {
            Error::Token(TokenError::Unavailable {
                detail: "the token endpoint issued a token that is not a valid header value".into(),
                retry_after: None,
            })
        })?;
    value.set_sensitive(true);
    request.headers_mut().insert(AUTHORIZATION, value);
    Ok(request)
}

/// Requests hold their body as `Bytes`, so a copy for the one retry is cheap.
fn clone_request(request: &Request) -> Request {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::service_fn;

    /// Issues `token-1`, `token-2`, ... each valid for `lifetime`, counting fetches.
    struct CountingSource {
        fetches: Arc<AtomicUsize>,
        lifetime: Duration,
        clock: Clock,
    }

    impl TokenSource for CountingSource {
        fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send + '_>> {
            Box::pin(async move {
                // A slow token endpoint, so concurrent callers really overlap.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
                let now = self.clock.now();
                Ok(Token {
                    access_token: SecretString::from(format!("token-{n}")),
                    issued_at: now,
                    expires_at: now + self.lifetime,
                })
            })
        }
    }

    fn cache(lifetime: Duration) -> (Arc<TokenCache>, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let clock = Clock::system();
        let source = CountingSource {
            fetches: fetches.clone(),
            lifetime,
            clock,
        };
        let cache = TokenCache::new(Box::new(source), clock, Duration::from_secs(300));
        (Arc::new(cache), fetches)
    }

    #[tokio::test(start_paused = true)]
    async fn one_fetch_serves_many_concurrent_callers() {
        let (cache, fetches) = cache(Duration::from_secs(3600));
        let calls = (0..50).map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await.map(|t| t.expose_secret().to_owned()) })
        });
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), "token-1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_ahead_of_expiry() {
        let (cache, fetches) = cache(Duration::from_secs(3600));
        cache.token().await.unwrap();
        // 5 minutes before expiry the token is still served...
        tokio::time::advance(Duration::from_secs(3600 - 301)).await;
        assert_eq!(cache.token().await.unwrap().expose_secret(), "token-1");
        // ...and inside the margin it is replaced.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.token().await.unwrap().expose_secret(), "token-2");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn short_tokens_refresh_at_three_quarters_of_their_life() {
        let (cache, _) = cache(Duration::from_secs(60));
        cache.token().await.unwrap();
        tokio::time::advance(Duration::from_secs(44)).await;
        assert_eq!(cache.token().await.unwrap().expose_secret(), "token-1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.token().await.unwrap().expose_secret(), "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_refreshes_the_token_and_retries_once() {
        let (cache, fetches) = cache(Duration::from_secs(3600));
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
        let service = AuthLayer::new(cache).layer(inner);
        let response = service
            .oneshot(http::Request::new(Bytes::new()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(*seen.lock().unwrap(), ["Bearer token-1", "Bearer token-2"]);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_401_is_returned_not_retried_forever() {
        let (cache, fetches) = cache(Duration::from_secs(3600));
        let inner = service_fn(|_request: Request| async {
            let mut response = http::Response::new(Bytes::new());
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            Ok::<_, Error>(response)
        });
        let service = AuthLayer::new(cache).layer(inner);
        let response = service
            .oneshot(http::Request::new(Bytes::new()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }
}
