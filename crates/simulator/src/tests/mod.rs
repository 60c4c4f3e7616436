//! HTTP-level tests of the simulator: requests go through `app(..)` with `oneshot`, time is
//! paused and moved with `tokio::time::advance`, nothing sleeps.

mod cli;
mod faults;
mod jwt;
mod lifecycle;
mod list;
mod odata;
mod quota;
mod scan;
mod server;
mod token;

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;

use super::{SimState, SimulatorConfig, SimulatorHandle, app};
use crate::Clock;

pub(super) const TENANT: &str = "00000000-0000-0000-0000-000000000001";
pub(super) const CLIENT: &str = "11111111-1111-1111-1111-111111111111";
pub(super) const SECRET: &str = "simulator-secret";
pub(super) const SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

/// 2026-11-26T09:14:05Z, the date of the documentation's examples.
pub(super) fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_684_445)
}

/// Standalone timings, but every scan succeeds unless a test says otherwise.
pub(super) fn config() -> SimulatorConfig {
    SimulatorConfig {
        failed_share: 0.0,
        timed_out_share: 0.0,
        ..SimulatorConfig::standalone()
    }
}

pub(super) struct Sim {
    app: Router,
    pub(super) handle: SimulatorHandle,
}

pub(super) struct Resp {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: String,
}

impl Resp {
    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `error.code` of a Defender error body.
    pub(super) fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }

    pub(super) fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(super) fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

impl Sim {
    pub(super) fn new(config: SimulatorConfig) -> Self {
        let state = SimState::new(config, Clock::starting_at(start()));
        Self {
            app: app(state.clone()),
            handle: state.handle(),
        }
    }

    pub(super) async fn send(&self, request: Request<Body>) -> Resp {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub(super) async fn post_form(&self, uri: &str, body: &str) -> Resp {
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .expect("request");
        self.send(request).await
    }

    /// A v2.0 access token.
    pub(super) async fn token(&self) -> String {
        let body = form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", SCOPE),
        ]);
        let resp = self
            .post_form(&format!("/{TENANT}/oauth2/v2.0/token"), &body)
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        resp.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// A Defender call with a bearer token and an optional JSON body.
    pub(super) async fn call(
        &self,
        method: Method,
        uri: &str,
        token: &str,
        body: Option<&str>,
    ) -> Resp {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
        self.send(request.body(body).expect("request")).await
    }

    pub(super) async fn scan(&self, token: &str, machine: &str, scan_type: &str) -> Resp {
        let body = format!(r#"{{"Comment": "test scan", "ScanType": "{scan_type}"}}"#);
        let uri = format!("/api/machines/{machine}/runAntiVirusScan");
        self.call(Method::POST, &uri, token, Some(&body)).await
    }

    pub(super) async fn get_action(&self, token: &str, id: &str) -> Resp {
        self.call(
            Method::GET,
            &format!("/api/machineactions/{id}"),
            token,
            None,
        )
        .await
    }

    pub(super) fn machine(&self) -> String {
        self.handle.demo_machine_ids(1).remove(0)
    }
}

/// Asserts a Defender error: status, code, and a GUID `target`.
pub(super) fn assert_error(resp: &Resp, status: StatusCode, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.body);
    assert_eq!(resp.code(), code, "{}", resp.body);
    let target = resp.json()["error"]["target"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(uuid::Uuid::try_parse(&target).is_ok(), "target {target:?}");
}
