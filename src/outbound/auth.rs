//! Adds `Authorization: Bearer <token>` to every upstream request: the cache's token if it is
//! valid now, else the one the request got before its quota slot ([`super::ready`]), never
//! waiting for a fetch once the slot is taken; only a stack without that step fetches here. A 401 answer makes the cache forget the token the request carried (the
//! tenant may have revoked it early); whether to send again is the retry policy's call
//! ([`super::retry`]).

use std::sync::Arc;

use http::{HeaderValue, StatusCode, header::AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use tower::{Layer, Service, ServiceExt};

use super::{
    ready::ReadyToken,
    step::{self, Step, Stepped},
};
use crate::{
    call::{Request, Response},
    credentials::{TokenCache, TokenError},
    upstream::Error,
};

/// See the module docs.
#[derive(Clone)]
pub struct Authorize {
    tokens: Arc<TokenCache>,
}

impl Authorize {
    pub fn layer<S>(tokens: Arc<TokenCache>) -> impl Layer<S, Service = Stepped<Self, S>> + Clone {
        step::layer(Self { tokens })
    }
}

impl Step for Authorize {
    async fn call<S>(self, mut request: Request, next: S) -> Result<Response, Error>
    where
        S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let ready = request.extensions_mut().remove::<ReadyToken>();
        let token = match (self.tokens.valid_now(), ready) {
            (Some(token), _) | (None, Some(ReadyToken(token))) => token,
            (None, None) => self.tokens.token().await?,
        };
        let response = next.oneshot(authorize(request, &token)?).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            tracing::info!("the Defender API refused the access token; forgetting it");
            self.tokens.invalidate(&token);
        }
        Ok(response)
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
