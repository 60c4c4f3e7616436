//! Client credentials as Entra ID accepts them on the token endpoint: a secret in the form or in
//! HTTP Basic auth (RFC 6749 §2.3.1), or a JWT client assertion (certificate or workload
//! identity federation).
//!
//! Assertions are verified in [`super::assertion`].

use axum::http::{HeaderMap, header};
use secrecy::{ExposeSecret, SecretString};

pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `(client_id, client_secret)` from an `Authorization: Basic` header; both parts are
/// form-urlencoded before base64, as RFC 6749 requires.
pub(crate) fn basic(headers: &HeaderMap) -> Option<(String, SecretString)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| -> String {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), SecretString::from(unescape(secret))))
}

/// Compares without stopping at the first difference, so timing doesn't leak the secret.
pub(crate) fn secret_matches(given: &SecretString, expected: &SecretString) -> bool {
    let (a, b) = (
        given.expose_secret().as_bytes(),
        expected.expose_secret().as_bytes(),
    );
    let mut diff = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

/// Standard base64 with optional padding, as Basic auth sends it.
fn base64_decode(input: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(input)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(input))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn basic_auth_is_url_decoded() {
        let mut headers = HeaderMap::new();
        // "my%3Aid:s%2Bcret" -> id "my:id", secret "s+cret"
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(b"my%3Aid:s%2Bcret")
        );
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        let (id, secret) = basic(&headers).unwrap();
        assert_eq!(id, "my:id");
        assert_eq!(secret.expose_secret(), "s+cret");
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(basic(&headers).is_none());
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(basic(&headers).is_none());
    }

    #[test]
    fn secrets_compare_exactly() {
        let s = |v: &str| SecretString::from(v);
        assert!(secret_matches(&s("abc"), &s("abc")));
        assert!(!secret_matches(&s("abc"), &s("abd")));
        assert!(!secret_matches(&s("abc"), &s("abcd")));
        assert!(!secret_matches(&s(""), &s("abc")));
    }
}
