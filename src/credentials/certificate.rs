//! The client certificate credential: a PEM file with the certificate and its RSA private key,
//! turned into the signed JWT client assertion Entra ID requires (`PS256`, the certificate's
//! SHA-256 thumbprint in `x5t#S256` and its SHA-1 thumbprint in `x5t` for older tenants).
//!
//! Errors name the file and what is wrong with it, never the key.

use std::path::Path;

use aws_lc_rs::{digest, rand, signature};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer,
    pem::{self, PemObject},
};
use secrecy::SecretString;

/// How long an assertion is valid (Entra accepts 5 to 10 minutes).
const ASSERTION_LIFETIME_SECS: i64 = 600;

/// Why the certificate file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("AZURE_CLIENT_CERTIFICATE_PATH {path} cannot be read: {reason}")]
    Read { path: String, reason: String },
    #[error("AZURE_CLIENT_CERTIFICATE_PATH {path} holds no PEM CERTIFICATE block")]
    NoCertificate { path: String },
    #[error(
        "AZURE_CLIENT_CERTIFICATE_PATH {path} holds no PEM PRIVATE KEY block (PKCS#8 or PKCS#1, unencrypted)"
    )]
    NoKey { path: String },
    #[error(
        "the private key in AZURE_CLIENT_CERTIFICATE_PATH {path} is not a usable RSA key ({reason}); Entra ID client assertions need RSA"
    )]
    Key { path: String, reason: String },
    #[error("cannot sign the client assertion: {0}")]
    Sign(String),
}

/// A certificate and its key, ready to sign assertions.
pub struct Certificate {
    chain: Vec<CertificateDer<'static>>,
    key: signature::RsaKeyPair,
}

impl Certificate {
    /// Reads `path`: the first certificate is the one registered on the application (any
    /// following ones are its chain), plus one unencrypted RSA private key.
    pub fn load(path: &Path) -> Result<Self, CertificateError> {
        let shown = path.display().to_string();
        let pem_bytes = std::fs::read(path).map_err(|err| CertificateError::Read {
            path: shown.clone(),
            reason: err.to_string(),
        })?;
        Self::from_pem(&pem_bytes, &shown)
    }

    /// Parses PEM text; `shown` names its origin in errors.
    pub fn from_pem(pem_bytes: &[u8], shown: &str) -> Result<Self, CertificateError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem_bytes)
            .collect::<Result<_, pem::Error>>()
            .map_err(|err| CertificateError::Read {
                path: shown.to_owned(),
                reason: format!("invalid PEM: {err}"),
            })?;
        if chain.is_empty() {
            return Err(CertificateError::NoCertificate {
                path: shown.to_owned(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|_| CertificateError::NoKey {
                path: shown.to_owned(),
            })?;
        let key = match &key {
            PrivateKeyDer::Pkcs8(der) => signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => signature::RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => {
                return Err(CertificateError::Key {
                    path: shown.to_owned(),
                    reason: "not an RSA key".into(),
                });
            }
        }
        .map_err(|err| CertificateError::Key {
            path: shown.to_owned(),
            reason: err.to_string(),
        })?;
        Ok(Self { chain, key })
    }

    /// The base64url SHA-256 thumbprint of the certificate's DER (`x5t#S256`).
    pub fn thumbprint_sha256(&self) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &self.chain[0]))
    }

    fn thumbprint_sha1(&self) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            &self.chain[0],
        ))
    }

    /// A client assertion for `audience` (the token endpoint URL), valid from `now_unix`.
    pub fn client_assertion(
        &self,
        client_id: &str,
        audience: &str,
        now_unix: i64,
        send_chain: bool,
    ) -> Result<SecretString, CertificateError> {
        let mut header = serde_json::json!({
            "alg": "PS256",
            "typ": "JWT",
            "x5t#S256": self.thumbprint_sha256(),
            "x5t": self.thumbprint_sha1(),
        });
        if send_chain {
            // x5c is standard base64 (RFC 7515 §4.1.6), unlike the rest of the JWT.
            header["x5c"] = self
                .chain
                .iter()
                .map(|der| base64::engine::general_purpose::STANDARD.encode(der))
                .collect();
        }
        let mut jti = [0u8; 16];
        rand::fill(&mut jti).map_err(|_| CertificateError::Sign("no randomness".into()))?;
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Builder::from_random_bytes(jti).into_uuid().to_string(),
            "nbf": now_unix,
            "iat": now_unix,
            "exp": now_unix + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &signature::RSA_PSS_SHA256,
                &rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| CertificateError::Sign("RSA-PSS signing failed".into()))?;
        Ok(SecretString::from(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn self_signed() -> (String, rcgen::CertifiedKey<rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["scan-gateway".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        (
            pem,
            rcgen::CertifiedKey {
                cert,
                signing_key: key,
            },
        )
    }

    #[test]
    fn signs_a_verifiable_ps256_assertion_with_both_thumbprints() {
        let (pem, certified) = self_signed();
        let certificate = Certificate::from_pem(pem.as_bytes(), "test.pem").unwrap();
        let jwt = certificate
            .client_assertion(
                "client-1",
                "https://login/t/oauth2/v2.0/token",
                1_800_000_000,
                true,
            )
            .unwrap();
        let parts: Vec<&str> = jwt.expose_secret().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "PS256");
        let der = certified.cert.der();
        assert_eq!(
            header["x5t#S256"],
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der))
        );
        assert_eq!(
            header["x5c"][0],
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["exp"], 1_800_000_600);

        // The signature verifies against the certificate's public key.
        let end_entity = webpki::EndEntityCert::try_from(der).unwrap();
        end_entity
            .verify_signature(
                webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .unwrap();
    }

    #[test]
    fn unusable_files_are_named_and_the_key_is_never_quoted() {
        let (pem, _) = self_signed();
        let key_only = &pem[pem.find("-----BEGIN PRIVATE KEY").unwrap()..];
        let err = Certificate::from_pem(key_only.as_bytes(), "k.pem")
            .err()
            .unwrap();
        assert!(matches!(err, CertificateError::NoCertificate { .. }));
        let cert_only = &pem[..pem.find("-----BEGIN PRIVATE KEY").unwrap()];
        let err = Certificate::from_pem(cert_only.as_bytes(), "c.pem")
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("AZURE_CLIENT_CERTIFICATE_PATH c.pem")
        );
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ec_pem = format!("{}{}", cert_only, ec.serialize_pem());
        let err = Certificate::from_pem(ec_pem.as_bytes(), "ec.pem")
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains("RSA"), "{text}");
        assert!(!text.contains(&ec.serialize_pem()[40..80]));
        let err = Certificate::load(Path::new("/nonexistent/cert.pem"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("cannot be read"));
    }
}
