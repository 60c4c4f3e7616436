//! Client credentials as Entra ID accepts them on the token endpoint: a secret in the form or in
//! HTTP Basic auth (RFC 6749 §2.3.1), or a JWT client assertion (certificate or workload
//! identity federation).
//!
//! The simulator holds no keys, so an assertion's signature is not verified: it must be a
//! well-formed JWT (three base64url parts, JSON header and payload) that has not expired. That is
//! enough to exercise a client's certificate and federated-token code paths end to end.

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

/// Why an assertion was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AssertionError {
    Malformed,
    Expired,
}

/// Checks the shape of a JWT client assertion and its `exp` (unix seconds) against `now`.
pub(crate) fn check_assertion(jwt: &str, now_unix: i64) -> Result<(), AssertionError> {
    let mut parts = jwt.split('.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AssertionError::Malformed);
    };
    let json = |part: &str| -> Option<serde_json::Map<String, serde_json::Value>> {
        serde_json::from_slice(&base64_decode(part)?).ok()
    };
    let (Some(_), Some(claims)) = (json(head), json(body)) else {
        return Err(AssertionError::Malformed);
    };
    if sig.is_empty() || base64_decode(sig).is_none() {
        return Err(AssertionError::Malformed);
    }
    match claims.get("exp").and_then(serde_json::Value::as_i64) {
        Some(exp) if exp <= now_unix => Err(AssertionError::Expired),
        _ => Ok(()),
    }
}

/// Standard or URL-safe base64, padding optional (Basic auth uses the first, JWTs the second).
pub(crate) fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let input = input.trim_end_matches('=');
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover symbol cannot encode a byte.
    (bits < 6).then_some(out)
}

#[cfg(test)]
pub(crate) fn base64url_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_both_alphabets() {
        assert_eq!(
            base64_decode("aWQ6c2VjcmV0").as_deref(),
            Some(&b"id:secret"[..])
        );
        assert_eq!(
            base64_decode("aWQ6c2VjcmV0PQ==").as_deref(),
            Some(&b"id:secret="[..])
        );
        assert_eq!(base64_decode("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(base64_decode("a"), None);
        assert_eq!(base64_decode("a*b"), None);
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64url_encode(&bytes)), Some(bytes));
    }

    #[test]
    fn basic_auth_is_url_decoded() {
        let mut headers = HeaderMap::new();
        // "my%3Aid:s%2Bcret" -> id "my:id", secret "s+cret"
        let value = format!("Basic {}", base64url_encode(b"my%3Aid:s%2Bcret"));
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        let (id, secret) = basic(&headers).unwrap();
        assert_eq!(id, "my:id");
        assert_eq!(secret.expose_secret(), "s+cret");
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
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

    #[test]
    fn assertions_need_jwt_shape_and_a_future_exp() {
        let enc = |v: &str| base64url_encode(v.as_bytes());
        let jwt = |claims: &str| {
            format!(
                "{}.{}.{}",
                enc(r#"{"alg":"PS256"}"#),
                enc(claims),
                enc("sig")
            )
        };
        assert_eq!(check_assertion(&jwt(r#"{"exp":2000}"#), 1000), Ok(()));
        assert_eq!(check_assertion(&jwt(r#"{"sub":"x"}"#), 1000), Ok(()));
        assert_eq!(
            check_assertion(&jwt(r#"{"exp":1000}"#), 1000),
            Err(AssertionError::Expired)
        );
        assert_eq!(check_assertion("a.b", 0), Err(AssertionError::Malformed));
        assert_eq!(
            check_assertion(&format!("{}.x.y", enc("{}")), 0),
            Err(AssertionError::Malformed)
        );
        assert_eq!(
            check_assertion(&format!("{}.", jwt("{}")), 0),
            Err(AssertionError::Malformed)
        );
    }
}
