//! Issued access tokens and the `Authorization: Bearer` check of the Defender routes.
//!
//! Tokens are opaque random strings (256 bits of process entropy, never derived from the seed,
//! so they can't be guessed from one run to the next) that expire on the injectable clock.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use tokio::time::Instant;

use super::error::ApiError;
use super::rng::entropy;

/// Expired tokens are purged once this many are stored.
const PURGE_AT: usize = 10_000;

pub(crate) const MISSING: &str = "Unauthorized request - Authorization header is missing.";
pub(crate) const MALFORMED: &str =
    "Unauthorized request - Authorization header must be 'Bearer {access token}'.";
pub(crate) const INVALID: &str = "Unauthorized request - the access token is invalid.";
pub(crate) const EXPIRED: &str = "Unauthorized request - the access token has expired.";

#[derive(Debug)]
struct Issued {
    client_id: String,
    /// `None` when the lifetime is too long to represent: never expires.
    expires: Option<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct TokenStore {
    tokens: HashMap<String, Issued>,
}

impl TokenStore {
    pub(crate) fn issue(&mut self, client_id: &str, lifetime: Duration, now: Instant) -> String {
        if self.tokens.len() >= PURGE_AT {
            self.tokens.retain(|_, t| t.expires.is_none_or(|e| e > now));
        }
        let token = format!(
            "sim.{:016x}{:016x}{:016x}{:016x}",
            entropy(),
            entropy(),
            entropy(),
            entropy()
        );
        self.tokens.insert(
            token.clone(),
            Issued {
                client_id: client_id.to_owned(),
                expires: now.checked_add(lifetime),
            },
        );
        token
    }

    /// The client the request's token was issued to, or the 401 to answer.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        now: Instant,
    ) -> Result<String, ApiError> {
        let token = bearer(headers)?;
        let issued = self
            .tokens
            .get(token)
            .ok_or(ApiError::Unauthorized(INVALID))?;
        if issued.expires.is_some_and(|e| e <= now) {
            return Err(ApiError::Unauthorized(EXPIRED));
        }
        Ok(issued.client_id.clone())
    }

    pub(crate) fn revoke_all(&mut self) {
        self.tokens.clear();
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized(MISSING))?
        .to_str()
        .map_err(|_| ApiError::Unauthorized(MALFORMED))?;
    match value.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::Unauthorized(MALFORMED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire_and_can_be_revoked() {
        let mut store = TokenStore::default();
        let token = store.issue("client", Duration::from_secs(10), Instant::now());
        assert_ne!(
            token,
            store.issue("client", Duration::from_secs(10), Instant::now())
        );
        let headers = auth(&format!("Bearer {token}"));
        assert_eq!(
            store.authenticate(&headers, Instant::now()).as_deref(),
            Ok("client")
        );
        let lower = auth(&format!("bearer {token}"));
        assert!(store.authenticate(&lower, Instant::now()).is_ok());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            store.authenticate(&headers, Instant::now()),
            Err(ApiError::Unauthorized(EXPIRED))
        );
        let fresh = store.issue("client", Duration::MAX, Instant::now());
        store.revoke_all();
        assert_eq!(
            store.authenticate(&auth(&format!("Bearer {fresh}")), Instant::now()),
            Err(ApiError::Unauthorized(INVALID))
        );
    }

    #[test]
    fn header_shapes() {
        let store = TokenStore::default();
        let now = Instant::now();
        assert_eq!(
            store.authenticate(&HeaderMap::new(), now),
            Err(ApiError::Unauthorized(MISSING))
        );
        for bad in ["Bearer", "Bearer  ", "Basic abc", "token"] {
            assert_eq!(
                store.authenticate(&auth(bad), now),
                Err(ApiError::Unauthorized(MALFORMED)),
                "{bad}"
            );
        }
        assert_eq!(
            store.authenticate(&auth("Bearer nope"), now),
            Err(ApiError::Unauthorized(INVALID))
        );
    }
}
