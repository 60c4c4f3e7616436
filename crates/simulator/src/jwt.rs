//! Access tokens as Entra ID issues them: JWTs with the claims of an app-only v1.0 token,
//! signed by a key of the simulator's own, whose public half is served as a JWKS.
//!
//! The key is ES256 (P-256) rather than Entra's RS256: a fresh key per simulator costs
//! microseconds, where an RSA key costs a tenth of a second, and test suites start hundreds
//! of simulators. Clients that decode the token or verify it against the published JWKS see
//! the same claims either way. The key never leaves the process and is never logged.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// The JWS algorithm of every issued token.
pub(crate) const ALG: &str = "ES256";

/// The claims of an app-only access token, in the order Entra writes them. The WindowsDefenderATP
/// resource is a first-party API, whose tokens are v1.0 (`appid`, `sts.windows.net` issuer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) aud: String,
    pub(crate) iss: String,
    pub(crate) iat: i64,
    pub(crate) nbf: i64,
    pub(crate) exp: i64,
    pub(crate) appid: String,
    /// How the client authenticated: "1" a secret, "2" a certificate or federated assertion.
    pub(crate) appidacr: String,
    pub(crate) idp: String,
    /// The application's service principal.
    pub(crate) oid: String,
    /// Omitted, as Entra omits it, when the application holds no role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) roles: Vec<String>,
    pub(crate) sub: String,
    pub(crate) tid: String,
    /// A unique token id.
    pub(crate) uti: String,
    pub(crate) ver: String,
}

/// The v1.0 issuer of a tenant's tokens.
pub(crate) fn issuer(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    typ: &'a str,
    alg: &'a str,
    kid: &'a str,
}

/// Why a token was not accepted; none of them quotes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error("not a well-formed JWT")]
    Malformed,
    #[error("not signed by the simulator's current key")]
    UnknownKey,
    #[error("the signature does not verify")]
    Signature,
}

/// Signing failed (the system random generator failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the access token could not be signed")]
pub(crate) struct SignError;

/// The simulator's signing key. `Debug` shows only the key id.
pub(crate) struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// One key of a JWKS (RFC 7517), for a P-256 key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Jwk {
    pub(crate) kty: String,
    #[serde(rename = "use")]
    pub(crate) use_: String,
    pub(crate) kid: String,
    pub(crate) alg: String,
    pub(crate) crv: String,
    pub(crate) x: String,
    pub(crate) y: String,
}

/// The document of a keys endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Jwks {
    pub(crate) keys: Vec<Jwk>,
}

impl Signer {
    /// A fresh key. Generation only fails when the system random generator does, which
    /// leaves nothing to simulate with.
    pub(crate) fn generate() -> Self {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .expect("the system random generator produces a P-256 key");
        let kid = thumbprint(&point(&key));
        Self {
            key,
            kid,
            rng: SystemRandom::new(),
        }
    }

    /// The compact JWS of `claims`.
    pub(crate) fn sign(&self, claims: &Claims) -> Result<String, SignError> {
        let header = Header {
            typ: "JWT",
            alg: ALG,
            kid: &self.kid,
        };
        let encode = |json: serde_json::Result<Vec<u8>>| json.map(|b| URL_SAFE_NO_PAD.encode(b));
        let (Ok(header), Ok(claims)) = (
            encode(serde_json::to_vec(&header)),
            encode(serde_json::to_vec(claims)),
        ) else {
            return Err(SignError);
        };
        let input = format!("{header}.{claims}");
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| SignError)?;
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// The claims of a token this key signed.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| VerifyError::Malformed)
        };
        let header_json = decode(head)?;
        let header: Header =
            serde_json::from_slice(&header_json).map_err(|_| VerifyError::Malformed)?;
        if header.alg != ALG || header.kid != self.kid {
            return Err(VerifyError::UnknownKey);
        }
        let point = point(&self.key);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(format!("{head}.{body}").as_bytes(), &decode(signature)?)
            .map_err(|_| VerifyError::Signature)?;
        serde_json::from_slice(&decode(body)?).map_err(|_| VerifyError::Malformed)
    }

    /// The public key as a one-key JWKS.
    pub(crate) fn jwks(&self) -> Jwks {
        let point = point(&self.key);
        let (x, y) = coordinates(&point);
        Jwks {
            keys: vec![Jwk {
                kty: "EC".to_owned(),
                use_: "sig".to_owned(),
                kid: self.kid.clone(),
                alg: ALG.to_owned(),
                crv: "P-256".to_owned(),
                x: URL_SAFE_NO_PAD.encode(x),
                y: URL_SAFE_NO_PAD.encode(y),
            }],
        }
    }
}

/// The uncompressed public point `04 || x || y`.
fn point(key: &EcdsaKeyPair) -> Vec<u8> {
    key.public_key().as_ref().to_vec()
}

/// `x` and `y` of an uncompressed P-256 point (65 bytes; anything shorter gives empty halves).
fn coordinates(point: &[u8]) -> (&[u8], &[u8]) {
    let xy = point.get(1..).unwrap_or_default();
    xy.split_at(xy.len() / 2)
}

/// The RFC 7638 thumbprint of the key: stable for the key, and what JOSE libraries compute.
fn thumbprint(point: &[u8]) -> String {
    let (x, y) = coordinates(point);
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(x),
        URL_SAFE_NO_PAD.encode(y)
    );
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            aud: "https://api.securitycenter.microsoft.com".into(),
            iss: issuer("t"),
            iat: 1,
            nbf: 1,
            exp: 2,
            appid: "c".into(),
            appidacr: "1".into(),
            idp: issuer("t"),
            oid: "o".into(),
            roles: vec!["Machine.Scan".into()],
            sub: "o".into(),
            tid: "t".into(),
            uti: "u".into(),
            ver: "1.0".into(),
        }
    }

    #[test]
    fn signed_tokens_verify_and_keep_their_claims() {
        let signer = Signer::generate();
        let token = signer.sign(&claims()).unwrap();
        assert_eq!(signer.verify(&token), Ok(claims()));
        let other = Signer::generate();
        assert_ne!(signer.jwks().keys[0].kid, other.jwks().keys[0].kid);
        assert_eq!(other.verify(&token), Err(VerifyError::UnknownKey));
        assert!(!format!("{signer:?}").contains("key:"), "{signer:?}");
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let signer = Signer::generate();
        let token = signer.sign(&claims()).unwrap();
        let [head, body, signature]: [&str; 3] =
            token.split('.').collect::<Vec<_>>().try_into().unwrap();
        let mut forged = claims();
        forged.roles.push("Machine.Isolate".into());
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            signer.verify(&format!("{head}.{forged_body}.{signature}")),
            Err(VerifyError::Signature)
        );
        for malformed in ["", "a.b", "a.b.c.d", &format!("{head}.{body}.!!")] {
            assert_eq!(
                signer.verify(malformed),
                Err(VerifyError::Malformed),
                "{malformed}"
            );
        }
        let none = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"none","kid":"x"}"#);
        assert_eq!(
            signer.verify(&format!("{none}.{body}.")),
            Err(VerifyError::UnknownKey)
        );
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint_of_the_published_key() {
        let signer = Signer::generate();
        let jwk = &signer.jwks().keys[0];
        let canonical = format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
            jwk.crv, jwk.kty, jwk.x, jwk.y
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        assert_eq!(jwk.kid, URL_SAFE_NO_PAD.encode(digest));
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap().len(), 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.y).unwrap().len(), 32);
    }
}
