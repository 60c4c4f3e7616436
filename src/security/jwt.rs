//! Bearer JWTs of callers (e.g. Kubernetes projected service-account tokens), verified
//! against a JWKS: RS256, PS256 or ES256 signature by a key of the set, `iss` and `aud` as
//! configured, `exp`/`nbf` with a small leeway. The caller is the token's `sub`.
//!
//! The JWKS comes from a file (re-read when its contents change) or an https URL (fetched at
//! start, refreshed every [`URL_REFRESH`]; a failed refresh keeps the last good set).

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use url::Url;

use super::JwtSettings;
use crate::{clock::Clock, upstream::parse_base_url};

/// How often a JWKS file is checked.
pub const FILE_POLL: Duration = Duration::from_secs(5);
/// How often a JWKS URL is fetched again.
pub const URL_REFRESH: Duration = Duration::from_secs(300);
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_S: i64 = 30;

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(Url),
}

impl JwksSource {
    /// An http(s) URL (plain http on loopback only), else a file path.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.starts_with("https://") || raw.starts_with("http://") {
            parse_base_url(raw)
                .map(JwksSource::Url)
                .map_err(|e| e.to_string())
        } else if raw.trim().is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(JwksSource::File(PathBuf::from(raw)))
        }
    }
}

/// Why a token was refused. Never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("the bearer token's algorithm {0} is not accepted (RS256, PS256, ES256)")]
    Algorithm(String),
    #[error("the bearer token is signed by a key the gateway does not trust")]
    UnknownKey,
    #[error("the bearer token's signature is invalid")]
    Signature,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid yet")]
    NotYetValid,
    #[error("the bearer token's issuer is not the expected one")]
    Issuer,
    #[error("the bearer token's audience is not this gateway")]
    Audience,
    #[error("the bearer token has no subject")]
    Subject,
}

/// One verification key of the set.
#[derive(Debug, Clone)]
enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed P-256 point.
    P256(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    key: Key,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWKS document; keys of other types or uses are skipped.
fn parse_jwks(body: &[u8]) -> Result<Vec<Jwk>, String> {
    let set: RawSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let b64 = |v: &Option<String>| v.as_deref().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok());
    Ok(set
        .keys
        .into_iter()
        .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
        .filter_map(|k| {
            let key = match (k.kty.as_str(), k.crv.as_deref()) {
                ("RSA", _) => Key::Rsa {
                    n: b64(&k.n)?,
                    e: b64(&k.e)?,
                },
                ("EC", Some("P-256")) => {
                    let (x, y) = (b64(&k.x)?, b64(&k.y)?);
                    if x.len() != 32 || y.len() != 32 {
                        return None;
                    }
                    Key::P256([&[4u8][..], &x, &y].concat())
                }
                _ => return None,
            };
            Some(Jwk { kid: k.kid, key })
        })
        .collect())
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// Verifies bearer tokens; clones share the key set.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Arc<RwLock<Vec<Jwk>>>,
    issuer: String,
    audience: String,
    clock: Clock,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Loads the key set (a file must be readable now; a URL that cannot be fetched yet is
    /// retried) and starts keeping it fresh.
    pub async fn start(settings: &JwtSettings, clock: Clock) -> Result<Self, String> {
        let keys = Arc::new(RwLock::new(Vec::new()));
        match &settings.jwks {
            JwksSource::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("cannot read JWKS {}: {e}", path.display()))?;
                *keys.write().unwrap_or_else(|e| e.into_inner()) = parse_jwks(&bytes)
                    .map_err(|e| format!("cannot use JWKS {}: {e}", path.display()))?;
                tokio::spawn(watch_file(path.clone(), bytes, Arc::downgrade(&keys)));
            }
            JwksSource::Url(url) => {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
                match fetch(&http, url).await {
                    Ok(fresh) => *keys.write().unwrap_or_else(|e| e.into_inner()) = fresh,
                    Err(err) => {
                        tracing::warn!(%url, error = %err, "JWKS not fetched yet; bearer tokens are refused until it is")
                    }
                }
                tokio::spawn(refresh_url(http, url.clone(), Arc::downgrade(&keys)));
            }
        }
        Ok(Self {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            clock,
        })
    }

    /// The caller (`sub`) of a valid token.
    pub fn verify(&self, token: &str) -> Result<String, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed)
        };
        let header: Header =
            serde_json::from_slice(&decode(h)?).map_err(|_| JwtError::Malformed)?;
        let signature = decode(s)?;
        let message = &token.as_bytes()[..h.len() + 1 + c.len()];
        {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            let candidates = keys
                .iter()
                .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid);
            let mut known = false;
            let mut valid = false;
            for jwk in candidates {
                let ok = match (header.alg.as_str(), &jwk.key) {
                    ("RS256", Key::Rsa { n, e }) => RsaPublicKeyComponents { n, e }
                        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, &signature)
                        .is_ok(),
                    ("PS256", Key::Rsa { n, e }) => RsaPublicKeyComponents { n, e }
                        .verify(&signature::RSA_PSS_2048_8192_SHA256, message, &signature)
                        .is_ok(),
                    ("ES256", Key::P256(point)) => {
                        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                            .verify(message, &signature)
                            .is_ok()
                    }
                    ("RS256" | "PS256" | "ES256", _) => continue,
                    (other, _) => return Err(JwtError::Algorithm(other.to_owned())),
                };
                known = true;
                if ok {
                    valid = true;
                    break;
                }
            }
            if !matches!(header.alg.as_str(), "RS256" | "PS256" | "ES256") {
                return Err(JwtError::Algorithm(header.alg));
            }
            match (known, valid) {
                (_, true) => {}
                (false, false) => return Err(JwtError::UnknownKey),
                (true, false) => return Err(JwtError::Signature),
            }
        }
        let claims: Claims =
            serde_json::from_slice(&decode(c)?).map_err(|_| JwtError::Malformed)?;
        let now = self.clock.utc().unix_timestamp();
        match claims.exp {
            Some(exp) if exp + LEEWAY_S > now => {}
            // A token without expiry is not accepted either.
            _ => return Err(JwtError::Expired),
        }
        if claims.nbf.is_some_and(|nbf| nbf - LEEWAY_S > now) {
            return Err(JwtError::NotYetValid);
        }
        if claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(JwtError::Issuer);
        }
        let audience_ok = match &claims.aud {
            Some(Audience::One(aud)) => *aud == self.audience,
            Some(Audience::Many(auds)) => auds.contains(&self.audience),
            None => false,
        };
        if !audience_ok {
            return Err(JwtError::Audience);
        }
        claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(JwtError::Subject)
    }
}

async fn watch_file(path: PathBuf, mut seen: Vec<u8>, keys: std::sync::Weak<RwLock<Vec<Jwk>>>) {
    let mut tick = tokio::time::interval(FILE_POLL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(keys) = keys.upgrade() else { return };
        match std::fs::read(&path) {
            Ok(bytes) if bytes == seen => {}
            Ok(bytes) => match parse_jwks(&bytes) {
                Ok(fresh) => {
                    *keys.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                    seen = bytes;
                    tracing::info!(path = %path.display(), "JWKS reloaded");
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "JWKS not reloaded")
                }
            },
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "JWKS not reloaded"),
        }
    }
}

async fn refresh_url(http: reqwest::Client, url: Url, keys: std::sync::Weak<RwLock<Vec<Jwk>>>) {
    loop {
        let empty = match keys.upgrade() {
            Some(keys) => keys.read().unwrap_or_else(|e| e.into_inner()).is_empty(),
            None => return,
        };
        // Retry soon while there is no key at all.
        tokio::time::sleep(if empty {
            Duration::from_secs(10)
        } else {
            URL_REFRESH
        })
        .await;
        let result = fetch(&http, &url).await;
        let Some(keys) = keys.upgrade() else { return };
        match result {
            Ok(fresh) => *keys.write().unwrap_or_else(|e| e.into_inner()) = fresh,
            Err(err) => {
                tracing::warn!(%url, error = %err, "JWKS refresh failed; keeping the last keys")
            }
        }
    }
}

async fn fetch(http: &reqwest::Client, url: &Url) -> Result<Vec<Jwk>, String> {
    let response = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    parse_jwks(&body)
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
    };

    use super::*;

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    struct Es256 {
        key: EcdsaKeyPair,
    }

    impl Es256 {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Self {
                key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                    .unwrap(),
            }
        }

        fn jwks(&self, kid: &str) -> Vec<u8> {
            let point = self.key.public_key().as_ref();
            serde_json::json!({"keys": [
                {"kty": "oct", "k": "c2VjcmV0"},
                {"kty": "EC", "crv": "P-256", "kid": kid,
                 "x": b64(&point[1..33]), "y": b64(&point[33..65])}
            ]})
            .to_string()
            .into_bytes()
        }

        fn token(&self, alg: &str, kid: &str, claims: serde_json::Value) -> String {
            let header = serde_json::json!({"alg": alg, "kid": kid});
            let message = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
            let sig = self
                .key
                .sign(&SystemRandom::new(), message.as_bytes())
                .unwrap();
            format!("{message}.{}", b64(sig))
        }
    }

    fn verifier(jwks: &[u8]) -> JwtVerifier {
        JwtVerifier {
            keys: Arc::new(RwLock::new(parse_jwks(jwks).unwrap())),
            issuer: "iss".into(),
            audience: "aud".into(),
            clock: Clock::system(),
        }
    }

    fn now() -> i64 {
        Clock::system().utc().unix_timestamp()
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"iss": "iss", "aud": "aud", "sub": "me", "exp": now() + 60})
    }

    #[test]
    fn es256_with_a_single_audience_is_accepted() {
        let key = Es256::new();
        let v = verifier(&key.jwks("a"));
        assert_eq!(
            v.verify(&key.token("ES256", "a", claims())),
            Ok("me".into())
        );
    }

    #[test]
    fn other_algorithms_and_unknown_kids_are_refused() {
        let key = Es256::new();
        let v = verifier(&key.jwks("a"));
        assert_eq!(
            v.verify(&key.token("none", "a", claims())),
            Err(JwtError::Algorithm("none".into()))
        );
        assert_eq!(
            v.verify(&key.token("HS256", "a", claims())),
            Err(JwtError::Algorithm("HS256".into()))
        );
        assert_eq!(
            v.verify(&key.token("ES256", "b", claims())),
            Err(JwtError::UnknownKey)
        );
        let unsigned = key.token("ES256", "a", claims());
        let cut = &unsigned[..unsigned.rfind('.').unwrap()];
        assert_eq!(v.verify(&format!("{cut}.")), Err(JwtError::Signature));
        assert_eq!(v.verify(cut), Err(JwtError::Malformed));
    }

    #[test]
    fn time_and_subject_claims_are_checked() {
        let key = Es256::new();
        let v = verifier(&key.jwks("a"));
        let mut c = claims();
        c["nbf"] = (now() + 600).into();
        assert_eq!(
            v.verify(&key.token("ES256", "a", c)),
            Err(JwtError::NotYetValid)
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            v.verify(&key.token("ES256", "a", c)),
            Err(JwtError::Expired)
        );
        let mut c = claims();
        c["sub"] = "".into();
        assert_eq!(
            v.verify(&key.token("ES256", "a", c)),
            Err(JwtError::Subject)
        );
    }

    #[test]
    fn jwks_source_is_a_path_or_a_secure_url() {
        assert_eq!(
            JwksSource::parse("/var/run/jwks.json"),
            Ok(JwksSource::File("/var/run/jwks.json".into()))
        );
        assert!(matches!(
            JwksSource::parse("https://issuer.example/openid/v1/jwks"),
            Ok(JwksSource::Url(_))
        ));
        assert!(JwksSource::parse("http://127.0.0.1:8080/jwks").is_ok());
        assert!(JwksSource::parse("http://issuer.example/jwks").is_err());
        assert!(JwksSource::parse(" ").is_err());
    }
}
