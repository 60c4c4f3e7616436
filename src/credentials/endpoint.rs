//! Entra ID's v2.0 token endpoint: the client-credentials request, both response shapes, and
//! refusals turned into errors that say what to fix.
//!
//! No error quotes a secret or an assertion: Entra's own `error_description` is reduced to its
//! first line, which names ids and codes only.

use std::{fmt, time::Duration};

use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::{CredentialKind, hints};
use crate::clock::Clock;
use secrecy::SecretString;

/// An access token and when it stops being valid.
#[derive(Clone)]
pub struct Token {
    pub access_token: SecretString,
    pub issued_at: Instant,
    pub expires_at: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token endpoint answered and refused: a configuration problem, retrying won't help.
    #[error("the token endpoint refused the {kind} credential ({error}{}): {hint}", aadsts.map(|c| format!(", AADSTS{c}")).unwrap_or_default())]
    Refused {
        kind: &'static str,
        status: u16,
        error: String,
        aadsts: Option<u32>,
        hint: String,
    },
    /// The token endpoint could not be reached or is failing: transient.
    #[error("the token endpoint is unavailable: {detail}")]
    Unavailable {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// The local credential (certificate or token file) cannot be used.
    #[error("the credential cannot be used: {0}")]
    Credential(String),
}

impl TokenError {
    /// The outcome label of the token request metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            TokenError::Refused { .. } => "refused",
            TokenError::Unavailable { .. } => "unavailable",
            TokenError::Credential(_) => "credential_error",
        }
    }
}

/// The v2.0 token endpoint of one tenant.
#[derive(Clone)]
pub struct TokenEndpoint {
    url: Url,
    scope: String,
    http: reqwest::Client,
    clock: Clock,
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("url", &self.url.as_str())
            .field("scope", &self.scope)
            .finish()
    }
}

impl TokenEndpoint {
    /// `{authority}/{tenant}/oauth2/v2.0/token`; `authority` is an already validated base URL.
    pub fn new(
        authority: &Url,
        tenant_id: &str,
        scope: String,
        http: reqwest::Client,
        clock: Clock,
    ) -> Result<Self, url::ParseError> {
        let mut url = authority.clone();
        url.path_segments_mut()
            .map_err(|()| url::ParseError::RelativeUrlWithCannotBeABaseBase)?
            .pop_if_empty()
            .extend([tenant_id, "oauth2", "v2.0", "token"]);
        Ok(Self {
            url,
            scope,
            http,
            clock,
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Posts the form and decodes the answer. The lifetime counts from when the request left,
    /// so network time shortens it, never lengthens it.
    pub async fn request(
        &self,
        form: &[(&str, &str)],
        kind: CredentialKind,
    ) -> Result<Token, TokenError> {
        let sent_at = self.clock.now();
        let unavailable = |detail: String| TokenError::Unavailable {
            detail,
            retry_after: None,
        };
        let response = self
            .http
            .post(self.url.clone())
            .form(form)
            .send()
            .await
            .map_err(|err| {
                unavailable(format!(
                    "{}: {}",
                    self.url,
                    crate::call::describe_error(&err)
                ))
            })?;
        let status = response.status();
        let retry_after = crate::call::retry_after(response.headers(), self.clock.utc().into());
        let body = response.bytes().await.map_err(|err| {
            unavailable(format!(
                "{}: {}",
                self.url,
                crate::call::describe_error(&err)
            ))
        })?;
        if status.is_success() {
            let parsed: TokenResponse = serde_json::from_slice(&body)
                .map_err(|err| unavailable(format!("the token response is not valid: {err}")))?;
            return parsed.into_token(sent_at, &self.clock);
        }
        let error: TokenErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        if status.is_server_error()
            || status.as_u16() == 429
            || error.error == "temporarily_unavailable"
        {
            return Err(TokenError::Unavailable {
                detail: format!(
                    "{} answered HTTP {status}{}",
                    self.url,
                    error
                        .aadsts()
                        .map(|c| format!(" AADSTS{c}"))
                        .unwrap_or_default()
                ),
                retry_after,
            });
        }
        let aadsts = error.aadsts();
        Err(TokenError::Refused {
            kind: kind.as_str(),
            status: status.as_u16(),
            hint: hints::hint(aadsts, kind, status.as_u16(), &error.error_description),
            error: if error.error.is_empty() {
                format!("HTTP {status}")
            } else {
                error.error
            },
            aadsts,
        })
    }
}

/// The longest lifetime a token is taken to have. Entra ID issues tokens for one to 24 hours;
/// an answer claiming more (`expires_in` up to `u64::MAX` seconds would overflow an `Instant`)
/// is read as this, so such a token is fetched anew within a day.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Both response shapes: v2.0 (numbers) and v1 (numbers as strings, `expires_on`).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_on: Option<u64>,
}

impl TokenResponse {
    fn into_token(self, sent_at: Instant, clock: &Clock) -> Result<Token, TokenError> {
        let lifetime = match (self.expires_in, self.expires_on) {
            (Some(secs), _) => Duration::from_secs(secs),
            (None, Some(on)) => {
                let now = u64::try_from(clock.utc().unix_timestamp()).unwrap_or(0);
                Duration::from_secs(on.saturating_sub(now))
            }
            (None, None) => {
                return Err(TokenError::Unavailable {
                    detail: "the token response has neither expires_in nor expires_on".into(),
                    retry_after: None,
                });
            }
        };
        let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
        if self.access_token.is_empty() || lifetime.is_zero() {
            return Err(TokenError::Unavailable {
                detail: "the token response holds no usable token".into(),
                retry_after: None,
            });
        }
        Ok(Token {
            access_token: SecretString::from(self.access_token),
            issued_at: sent_at,
            expires_at: crate::call::instant_after(sent_at, lifetime),
        })
    }
}

fn number_or_string<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrString {
        Number(u64),
        String(String),
    }
    match Option::<NumberOrString>::deserialize(deserializer)? {
        None => Ok(None),
        Some(NumberOrString::Number(n)) => Ok(Some(n)),
        Some(NumberOrString::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a number of seconds"))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TokenErrorBody {
    error: String,
    error_description: String,
    error_codes: Vec<u32>,
}

impl TokenErrorBody {
    /// The AADSTS code, from `error_codes` or the description's prefix.
    fn aadsts(&self) -> Option<u32> {
        self.error_codes.first().copied().or_else(|| {
            self.error_description
                .strip_prefix("AADSTS")?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> TokenResponse {
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn understands_v2_and_v1_responses() {
        let clock = Clock::system();
        let now = clock.now();
        let v2 = parse(
            r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"a"}"#,
        )
        .into_token(now, &clock)
        .unwrap();
        assert_eq!(v2.expires_at - now, Duration::from_secs(3599));
        let v1 = parse(r#"{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","expires_on":"1795684465","access_token":"b"}"#)
            .into_token(now, &clock)
            .unwrap();
        assert_eq!(v1.expires_at - now, Duration::from_secs(3599));
        let on = clock.utc().unix_timestamp() + 600;
        let only_on = parse(&format!(r#"{{"expires_on":"{on}","access_token":"c"}}"#))
            .into_token(now, &clock)
            .unwrap();
        assert_eq!(only_on.expires_at - now, Duration::from_secs(600));
        assert!(
            parse(r#"{"access_token":"d"}"#)
                .into_token(now, &clock)
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_lifetime_is_clamped_to_a_day() {
        let clock = Clock::system();
        let now = clock.now();
        let huge = parse(r#"{"expires_in":18446744073709551615,"access_token":"a"}"#)
            .into_token(now, &clock)
            .unwrap();
        assert_eq!(huge.expires_at - now, MAX_TOKEN_LIFETIME);
        let far = parse(r#"{"expires_on":"18446744073709551615","access_token":"b"}"#)
            .into_token(now, &clock)
            .unwrap();
        assert_eq!(far.expires_at - now, MAX_TOKEN_LIFETIME);
    }

    #[test]
    fn the_aadsts_code_comes_from_error_codes_or_the_description() {
        let body = TokenErrorBody {
            error_description: "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"
                .into(),
            ..Default::default()
        };
        assert_eq!(body.aadsts(), Some(7000215));
        let body = TokenErrorBody {
            error_codes: vec![700016],
            ..Default::default()
        };
        assert_eq!(body.aadsts(), Some(700016));
    }

    #[test]
    fn debug_never_prints_the_token() {
        let token = Token {
            access_token: SecretString::from("super-secret-token"),
            issued_at: Instant::now(),
            expires_at: Instant::now(),
        };
        assert!(!format!("{token:?}").contains("super-secret"));
    }
}
