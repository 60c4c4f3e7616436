//! Adds `Authorization: Bearer <token>` to every upstream request, from the token cache
//! ([`TokenCache`]). A 401 answer makes the cache forget the token the request carried (the
//! tenant may have revoked it early); whether to send again is the retry policy's call
//! ([`super::retry`]).

use std::{
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, StatusCode, header::AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use tower::{Layer, Service, ServiceExt, layer::layer_fn};

use crate::{
    call::{Request, Response},
    credentials::{TokenCache, TokenError},
    upstream::Error,
};

/// See the module docs.
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    tokens: Arc<TokenCache>,
}

impl<S> Authorize<S> {
    pub fn layer(tokens: Arc<TokenCache>) -> impl Layer<S, Service = Self> + Clone {
        layer_fn(move |inner| Self {
            inner,
            tokens: tokens.clone(),
        })
    }
}

impl<S> Service<Request> for Authorize<S>
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
            let token = tokens.token().await?;
            let response = inner.oneshot(authorize(request, &token)?).await?;
            if response.status() == StatusCode::UNAUTHORIZED {
                tracing::info!("the Defender API refused the access token; forgetting it");
                tokens.invalidate(&token);
            }
            Ok(response)
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
