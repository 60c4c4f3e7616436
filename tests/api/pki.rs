//! Test fixtures for the secured gateway: temporary files, certificates made with rcgen, JWTs
//! signed with aws-lc-rs, and a gateway started from settings that may turn TLS on. Shared by
//! `security` (the gateway's side) and `cli_security` (the `scan` client's side).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::{KeySize, PublicKeyComponents},
    signature::{self, KeyPair as _, RsaKeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use scan_gateway::{
    clock::Clock,
    config::{ConfigArgs, Settings},
    startup::Gateway,
};
use tokio::{sync::oneshot, task::JoinHandle};

use crate::helpers::TestSimulator;

// === files ===

/// A fresh directory under the system temp dir for one test's certificates and keys,
/// removed when dropped.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "a name unique across test processes"
)]
pub fn temp_dir() -> TempDir {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "scan-gateway-security-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

// === certificates ===

pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// (certificate PEM, key PEM) for `names`, signed by `ca`.
pub fn leaf(ca: &Ca, names: Vec<SanType>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = names;
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn localhost() -> Vec<SanType> {
    vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress([127, 0, 0, 1].into()),
    ]
}

pub fn uri(u: &str) -> Vec<SanType> {
    vec![SanType::URI(u.try_into().unwrap())]
}

// === a gateway on TLS ===

pub struct SecureGateway {
    pub addr: SocketAddr,
    pub sim: Arc<TestSimulator>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for SecureGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

pub async fn spawn_secure(sim: TestSimulator, args: ConfigArgs) -> SecureGateway {
    let settings = Settings::load(&args).expect("test settings are valid");
    let gateway = Gateway::build(&settings, Clock::system())
        .await
        .expect("gateway starts");
    let addr = gateway.local_addr();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(gateway.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    SecureGateway {
        addr,
        sim: Arc::new(sim),
        stop: Some(stop),
        task,
    }
}

// === JWT ===

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const AUDIENCE: &str = "scan-gateway";

pub struct Signer {
    key: RsaKeyPair,
    kid: String,
}

impl Signer {
    pub fn new(kid: &str) -> Self {
        Self {
            key: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
            kid: kid.to_owned(),
        }
    }

    pub fn jwk(&self) -> serde_json::Value {
        let public = PublicKeyComponents::<Vec<u8>>::from(self.key.public_key());
        serde_json::json!({
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&public.n),
            "e": URL_SAFE_NO_PAD.encode(&public.e),
        })
    }

    /// A JWKS document holding this key.
    pub fn jwks(&self) -> String {
        serde_json::json!({ "keys": [self.jwk()] }).to_string()
    }

    pub fn token(&self, claims: serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "JWTs are checked against the gateway process's system clock"
)]
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a Kubernetes projected service-account token.
pub fn claims(sub: &str) -> serde_json::Value {
    claims_between(sub, now(), now() + 600)
}

/// Claims of such a token valid from `nbf` to `exp` (Unix seconds).
pub fn claims_between(sub: &str, nbf: i64, exp: i64) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": [AUDIENCE], "sub": sub,
        "iat": nbf, "nbf": nbf, "exp": exp,
    })
}
