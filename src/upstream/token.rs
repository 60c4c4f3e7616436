//! Microsoft Entra ID's token endpoint: the OAuth2 client-credentials grant.
//!
//! Errors name the cause and the variable to check, never the secret: Entra's own
//! `error_description` is reduced to its first line, which quotes ids but no credential.

use std::{fmt, future::Future, pin::Pin, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::clock::Clock;

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
    #[error("the token endpoint refused the credentials ({error}{}): {hint}", aadsts.map(|c| format!(", AADSTS{c}")).unwrap_or_default())]
    Refused {
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
}

/// Anything that can fetch a fresh token (client secret today; certificates and workload
/// identity plug in here).
pub trait TokenSource: Send + Sync + 'static {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send + '_>>;
}

/// The client-credentials grant with a client secret, against the v2.0 endpoint.
pub struct ClientSecretCredential {
    endpoint: Url,
    client_id: String,
    client_secret: SecretString,
    scope: String,
    http: reqwest::Client,
    clock: Clock,
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("endpoint", &self.endpoint.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .finish()
    }
}

impl ClientSecretCredential {
    /// `authority` is the already validated authority host (`https://login.microsoftonline.com`).
    pub fn new(
        authority: &Url,
        tenant_id: &str,
        client_id: String,
        client_secret: SecretString,
        scope: String,
        http: reqwest::Client,
        clock: Clock,
    ) -> Result<Self, url::ParseError> {
        let mut endpoint = authority.clone();
        endpoint
            .path_segments_mut()
            .map_err(|()| url::ParseError::RelativeUrlWithCannotBeABaseBase)?
            .pop_if_empty()
            .extend([tenant_id, "oauth2", "v2.0", "token"]);
        Ok(Self {
            endpoint,
            client_id,
            client_secret,
            scope,
            http,
            clock,
        })
    }

    async fn request(&self) -> Result<Token, TokenError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("scope", self.scope.as_str()),
        ];
        let sent_at = self.clock.now();
        let response = self
            .http
            .post(self.endpoint.clone())
            .form(&form)
            .send()
            .await
            .map_err(|err| TokenError::Unavailable {
                detail: format!("{}: {}", self.endpoint, describe(&err)),
                retry_after: None,
            })?;
        let status = response.status();
        let retry_after = super::client::retry_after(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|err| TokenError::Unavailable {
                detail: format!("{}: {}", self.endpoint, describe(&err)),
                retry_after: None,
            })?;
        if status.is_success() {
            let parsed: TokenResponse =
                serde_json::from_slice(&body).map_err(|err| TokenError::Unavailable {
                    detail: format!("the token response is not valid JSON: {err}"),
                    retry_after: None,
                })?;
            return parsed.into_token(sent_at, &self.clock);
        }
        let error: TokenErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        if status.is_server_error()
            || status.as_u16() == 429
            || error.error == "temporarily_unavailable"
        {
            return Err(TokenError::Unavailable {
                detail: format!("HTTP {status} {}", error.error),
                retry_after,
            });
        }
        Err(refusal(status.as_u16(), error))
    }
}

impl TokenSource for ClientSecretCredential {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send + '_>> {
        Box::pin(self.request())
    }
}

fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

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
        // Count the lifetime from when the request left, so network time shortens it, never
        // lengthens it. `expires_on` is the fallback when `expires_in` is absent.
        let lifetime = match (self.expires_in, self.expires_on) {
            (Some(secs), _) => Duration::from_secs(secs),
            (None, Some(on)) => {
                let now = clock.utc().unix_timestamp();
                Duration::from_secs(on.saturating_sub(u64::try_from(now).unwrap_or(0)))
            }
            (None, None) => {
                return Err(TokenError::Unavailable {
                    detail: "the token response has neither expires_in nor expires_on".into(),
                    retry_after: None,
                });
            }
        };
        if self.access_token.is_empty() {
            return Err(TokenError::Unavailable {
                detail: "the token response has an empty access_token".into(),
                retry_after: None,
            });
        }
        Ok(Token {
            access_token: SecretString::from(self.access_token),
            issued_at: sent_at,
            expires_at: sent_at + lifetime,
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

/// Turns Entra's refusal into an error that says what to fix.
fn refusal(status: u16, body: TokenErrorBody) -> TokenError {
    let aadsts = body.error_codes.first().copied().or_else(|| {
        let digits = body.error_description.strip_prefix("AADSTS")?;
        digits
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    });
    let hint = match aadsts {
        Some(7000215) => "AZURE_CLIENT_SECRET is not a valid secret of this application (use the secret's value, not its id)".to_owned(),
        Some(7000222) => "the client secret in AZURE_CLIENT_SECRET has expired: create a new one".to_owned(),
        Some(700016) => "AZURE_CLIENT_ID names no application in tenant AZURE_TENANT_ID (check both, and AZURE_AUTHORITY_HOST for the right cloud)".to_owned(),
        Some(90002) => "AZURE_TENANT_ID names no tenant in this cloud (check it and AZURE_AUTHORITY_HOST)".to_owned(),
        Some(70011) => "MDE_TOKEN_SCOPE is not a valid scope (expected https://api.securitycenter.microsoft.com/.default)".to_owned(),
        Some(500011) => "the Defender API is not provisioned in this tenant (check MDE_TOKEN_SCOPE and the tenant)".to_owned(),
        _ => {
            let first_line = body.error_description.lines().next().unwrap_or("").trim();
            if first_line.is_empty() {
                format!("HTTP {status} without a description; check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET")
            } else {
                first_line.chars().take(300).collect()
            }
        }
    };
    TokenError::Refused {
        status,
        error: if body.error.is_empty() {
            format!("HTTP {status}")
        } else {
            body.error
        },
        aadsts,
        hint,
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
    }

    #[test]
    fn refusals_name_the_variable_to_fix() {
        let body = TokenErrorBody {
            error: "invalid_client".into(),
            error_description: "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"
                .into(),
            error_codes: vec![],
        };
        let err = refusal(401, body);
        let text = err.to_string();
        assert!(text.contains("AZURE_CLIENT_SECRET"), "{text}");
        assert!(text.contains("AADSTS7000215"), "{text}");
        let err = refusal(
            400,
            TokenErrorBody {
                error: "unauthorized_client".into(),
                error_description: String::new(),
                error_codes: vec![700016],
            },
        );
        assert!(err.to_string().contains("AZURE_CLIENT_ID"));
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let token = Token {
            access_token: SecretString::from("super-secret-token"),
            issued_at: Instant::now(),
            expires_at: Instant::now(),
        };
        assert!(!format!("{token:?}").contains("super-secret"));
    }
}
