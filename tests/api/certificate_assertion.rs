//! The gateway's certificate client assertions against the simulator's token endpoint: the
//! gateway signs, the simulator verifies. In process through the simulator's `app(..)` with
//! `oneshot` and paused time, like the simulator's own token tests (which cannot use the
//! gateway's signer: the simulator crate does not depend on the gateway).

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use defender_simulator::{Clock, SimState, SimulatorConfig, app};
use scan_gateway::credentials::Certificate;
use serde_json::Value;
use tower::ServiceExt;

const TENANT: &str = "00000000-0000-0000-0000-000000000001";
const CLIENT: &str = "11111111-1111-1111-1111-111111111111";
const SECRET: &str = "simulator-secret";
const SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

/// 2026-11-26T09:14:05Z, the date of the documentation's examples.
fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_684_445)
}

/// Standalone timings, but every scan succeeds (as in the simulator's own tests).
fn config() -> SimulatorConfig {
    SimulatorConfig {
        failed_share: 0.0,
        timed_out_share: 0.0,
        ..SimulatorConfig::standalone()
    }
}

/// The simulator's routes on a clock that starts at [`start`].
struct Sim {
    app: Router,
}

struct Resp {
    status: StatusCode,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Sim {
    fn new(config: SimulatorConfig) -> Self {
        Self {
            app: app(SimState::new(config, Clock::starting_at(start()))),
        }
    }

    async fn post_form(&self, uri: &str, body: &str) -> Resp {
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .expect("request");
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        Resp {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn v2_form(overrides: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", SCOPE),
    ];
    for (k, v) in overrides {
        pairs.retain(|(key, _)| key != k);
        if !v.is_empty() {
            pairs.push((k, v));
        }
    }
    form(&pairs)
}

fn v2_uri() -> String {
    format!("/{TENANT}/oauth2/v2.0/token")
}

fn now_unix() -> i64 {
    time::OffsetDateTime::from(start()).unix_timestamp()
}

fn assertion_form(jwt: &str) -> String {
    v2_form(&[
        ("client_secret", ""),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", jwt),
    ])
}

/// A self-signed RSA certificate as the gateway's credential sees it, and its DER.
fn certificate() -> (Certificate, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["scan-gateway".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pem = format!("{}{}", cert.pem(), key.serialize_pem());
    let credential = Certificate::from_pem(pem.as_bytes(), "test").unwrap();
    (credential, cert.der().to_vec())
}

#[tokio::test(start_paused = true)]
async fn a_certificate_assertion_verifies_against_the_registered_certificate() {
    let (credential, der) = certificate();
    let mut config = config();
    config.client_certificate = Some(der);
    let sim = Sim::new(config);
    let audience = format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token");
    let jwt = credential
        .client_assertion(CLIENT, &audience, now_unix(), false)
        .unwrap();
    let body = assertion_form(secrecy::ExposeSecret::expose_secret(&jwt));
    let resp = sim.post_form(&v2_uri(), &body).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    // Ten minutes later the same assertion has expired.
    tokio::time::advance(std::time::Duration::from_secs(601)).await;
    let resp = sim.post_form(&v2_uri(), &body).await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(resp.json()["error_codes"][0], 700024);
}

#[tokio::test(start_paused = true)]
async fn certificate_assertions_are_refused_when_unregistered_tampered_or_misaddressed() {
    let (credential, der) = certificate();
    let (other, _) = certificate();
    let mut config = config();
    config.client_certificate = Some(der);
    let sim = Sim::new(config);
    let audience = format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token");
    let expose = |jwt: secrecy::SecretString| secrecy::ExposeSecret::expose_secret(&jwt).to_owned();

    let unregistered = expose(
        other
            .client_assertion(CLIENT, &audience, now_unix(), false)
            .unwrap(),
    );
    let resp = sim
        .post_form(&v2_uri(), &assertion_form(&unregistered))
        .await;
    assert_eq!(resp.json()["error_codes"][0], 700027, "{}", resp.body);
    assert!(resp.body.contains("key was not found"), "{}", resp.body);

    let good = expose(
        credential
            .client_assertion(CLIENT, &audience, now_unix(), false)
            .unwrap(),
    );
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[2] = URL_SAFE_NO_PAD.encode(b"not the signature");
    let resp = sim
        .post_form(&v2_uri(), &assertion_form(&parts.join(".")))
        .await;
    assert_eq!(resp.json()["error_codes"][0], 700027, "{}", resp.body);
    assert!(resp.body.contains("signature is invalid"), "{}", resp.body);

    let elsewhere = expose(
        credential
            .client_assertion(
                CLIENT,
                "https://login.microsoftonline.com/other/oauth2/v2.0/token",
                now_unix(),
                false,
            )
            .unwrap(),
    );
    let resp = sim.post_form(&v2_uri(), &assertion_form(&elsewhere)).await;
    assert_eq!(resp.json()["error_codes"][0], 50027, "{}", resp.body);
}
