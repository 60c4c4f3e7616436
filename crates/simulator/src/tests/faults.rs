//! Fault injection: 500s, 429 storms, 403s, latency, lost responses, connection resets,
//! malformed JSON and token endpoint faults.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;
use tower::ServiceExt;

use super::*;
use crate::{EndpointFaults, Faults, ResetPoint};

fn faults(f: EndpointFaults) -> Faults {
    Faults::defender_api(f)
}

#[tokio::test(start_paused = true)]
async fn injected_errors_are_500_and_take_no_effect() {
    let sim = Sim::new(SimulatorConfig {
        faults: faults(EndpointFaults {
            error_rate: 1.0,
            ..EndpointFaults::default()
        }),
        ..config()
    });
    let token = sim.token().await;
    let resp = sim.scan(&token, &sim.machine(), "Quick").await;
    assert_error(
        &resp,
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
    );
    assert_eq!(resp.message(), "");
    let stats = sim.handle.stats();
    assert_eq!((stats.actions_created, stats.faults_injected), (0, 1));
    // Changed at runtime.
    sim.handle.set_faults(Faults::default());
    assert_eq!(
        sim.scan(&token, &sim.machine(), "Quick").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test(start_paused = true)]
async fn error_rates_are_seeded_and_partial() {
    let run = || async {
        let sim = Sim::new(SimulatorConfig {
            faults: faults(EndpointFaults {
                error_rate: 0.5,
                ..EndpointFaults::default()
            }),
            quota: vec![],
            ..config()
        });
        let token = sim.token().await;
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(
                sim.call(Method::GET, "/api/machineactions?$top=1", &token, None)
                    .await
                    .status
                    .as_u16(),
            );
        }
        statuses
    };
    let first = run().await;
    assert_eq!(first, run().await);
    assert!(first.contains(&500) && first.contains(&200), "{first:?}");
}

#[tokio::test(start_paused = true)]
async fn a_throttle_storm_answers_429_with_retry_after() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    sim.handle.set_faults(faults(EndpointFaults {
        throttle_rate: 1.0,
        retry_after: Duration::from_millis(6_200),
        ..EndpointFaults::default()
    }));
    for _ in 0..3 {
        let resp = sim
            .get_action(&token, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37")
            .await;
        assert_error(&resp, StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
        assert_eq!(resp.header("retry-after"), Some("7"));
    }
    assert_eq!(sim.handle.stats().throttled, 0, "injected, not quota");
}

#[tokio::test(start_paused = true)]
async fn latency_is_added_on_the_injectable_clock() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    sim.handle.set_faults(Faults {
        list_actions: EndpointFaults {
            latency: Duration::from_secs(5),
            ..EndpointFaults::default()
        },
        ..Faults::default()
    });
    let before = Instant::now();
    let resp = sim
        .call(Method::GET, "/api/machineactions", &token, None)
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(before.elapsed() >= Duration::from_secs(5));
    let before = Instant::now();
    sim.get_action(&token, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37")
        .await;
    assert!(
        before.elapsed() < Duration::from_secs(1),
        "only list_actions is slow"
    );
}

#[tokio::test(start_paused = true)]
async fn forbidden_answers_403_missing_roles() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    sim.handle.set_faults(Faults {
        run_scan: EndpointFaults {
            forbidden: true,
            ..EndpointFaults::default()
        },
        ..Faults::default()
    });
    let resp = sim.scan(&token, &sim.machine(), "Quick").await;
    assert_error(&resp, StatusCode::FORBIDDEN, "Forbidden");
    assert_eq!(
        resp.message(),
        "Missing application roles. API required roles: Machine.Scan"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_response_still_creates_the_action() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let machine = sim.machine();
    sim.handle.set_faults(Faults {
        run_scan: EndpointFaults {
            lost_response_rate: 1.0,
            ..EndpointFaults::default()
        },
        ..Faults::default()
    });
    let resp = sim.scan(&token, &machine, "Quick").await;
    assert_error(
        &resp,
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
    );
    assert_eq!(sim.handle.stats().actions_created, 1);
    sim.handle.set_faults(Faults::default());
    let retry = sim.scan(&token, &machine, "Quick").await;
    assert_error(
        &retry,
        StatusCode::BAD_REQUEST,
        "ActiveRequestAlreadyExists",
    );
}

#[tokio::test(start_paused = true)]
async fn token_endpoint_faults_use_entra_bodies() {
    let sim = Sim::new(config());
    let uri = format!("/{TENANT}/oauth2/v2.0/token");
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", SCOPE),
    ]);
    let token_faults = |f: EndpointFaults| Faults {
        token: f,
        ..Faults::default()
    };
    sim.handle.set_faults(token_faults(EndpointFaults {
        error_rate: 1.0,
        ..EndpointFaults::default()
    }));
    let resp = sim.post_form(&uri, &body).await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.json()["error"], "temporarily_unavailable");

    sim.handle.set_faults(token_faults(EndpointFaults {
        throttle_rate: 1.0,
        retry_after: Duration::from_secs(12),
        ..EndpointFaults::default()
    }));
    let resp = sim.post_form(&uri, &body).await;
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.header("retry-after"), Some("12"));
    assert_eq!(resp.json()["error_codes"][0], 90055);

    sim.handle.set_faults(Faults {
        token_secret_expired: true,
        ..Faults::default()
    });
    let resp = sim.post_form(&uri, &body).await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(resp.json()["error"], "invalid_client");
    assert_eq!(resp.json()["error_codes"][0], 7000222);
    assert_eq!(sim.handle.stats().tokens_issued, 0);
    assert_eq!(sim.handle.stats().token, 3);
}

/// A scan request whose body may never arrive: the status and the body read's outcome.
async fn raw_scan(sim: &Sim, token: &str, machine: &str) -> (StatusCode, Result<String, String>) {
    let request = axum::http::Request::post(format!("/api/machines/{machine}/runAntiVirusScan"))
        .header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(
            r#"{"Comment": "test scan", "ScanType": "Quick"}"#,
        ))
        .expect("request");
    let response = sim.app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| e.to_string());
    (status, body)
}

#[tokio::test(start_paused = true)]
async fn a_reset_before_effect_breaks_the_answer_and_creates_nothing() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    sim.handle.set_faults(faults(EndpointFaults {
        reset_rate: 1.0,
        reset_at: ResetPoint::Before,
        ..EndpointFaults::default()
    }));
    let (_, body) = raw_scan(&sim, &token, &sim.machine()).await;
    let err = body.expect_err("the answer never arrives");
    assert!(err.contains("injected connection reset"), "{err}");
    let stats = sim.handle.stats();
    assert_eq!((stats.actions_created, stats.faults_injected), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_reset_after_effect_creates_the_action_and_loses_the_answer() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let machine = sim.machine();
    sim.handle.set_faults(faults(EndpointFaults {
        reset_rate: 1.0,
        reset_at: ResetPoint::After,
        ..EndpointFaults::default()
    }));
    let (_, body) = raw_scan(&sim, &token, &machine).await;
    assert!(body.is_err(), "{body:?}");
    let stats = sim.handle.stats();
    assert_eq!((stats.actions_created, stats.faults_injected), (1, 1));
    sim.handle.set_faults(Faults::default());
    let retry = sim.scan(&token, &machine, "Quick").await;
    assert_error(
        &retry,
        StatusCode::BAD_REQUEST,
        "ActiveRequestAlreadyExists",
    );
}

#[tokio::test(start_paused = true)]
async fn a_malformed_answer_keeps_status_and_content_type_and_the_effect() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    sim.handle.set_faults(faults(EndpointFaults {
        malformed_rate: 1.0,
        ..EndpointFaults::default()
    }));
    // Seeded: over a few scans both kinds of garbling come up; none decodes as an action.
    for n in 0..6 {
        let machine = sim.handle.demo_machine_ids(n + 1)[n].clone();
        let resp = sim.scan(&token, &machine, "Quick").await;
        assert_eq!(resp.status, StatusCode::CREATED);
        assert_eq!(
            resp.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        let id = serde_json::from_str::<Value>(&resp.body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned));
        assert_eq!(id, None, "{}", resp.body);
    }
    let stats = sim.handle.stats();
    assert_eq!((stats.actions_created, stats.faults_injected), (6, 6));
    // Errors are never garbled: only successful answers carry an effect to hide.
    let resp = sim
        .get_action(&token, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37")
        .await;
    assert_error(&resp, StatusCode::NOT_FOUND, "ResourceNotFound");
}

#[tokio::test(start_paused = true)]
async fn token_answers_can_be_reset_or_garbled() {
    let sim = Sim::new(config());
    let uri = format!("/{TENANT}/oauth2/v2.0/token");
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", SCOPE),
    ]);
    sim.handle.set_faults(Faults {
        token: EndpointFaults {
            malformed_rate: 1.0,
            ..EndpointFaults::default()
        },
        ..Faults::default()
    });
    let resp = sim.post_form(&uri, &body).await;
    assert_eq!(resp.status, StatusCode::OK);
    let token = serde_json::from_str::<Value>(&resp.body)
        .ok()
        .and_then(|v| v["access_token"].as_str().map(str::to_owned));
    assert_eq!(token, None, "{}", resp.body);

    sim.handle.set_faults(Faults {
        token: EndpointFaults {
            reset_rate: 1.0,
            ..EndpointFaults::default()
        },
        ..Faults::default()
    });
    let request = axum::http::Request::post(&uri)
        .header(
            axum::http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(axum::body::Body::from(body))
        .expect("request");
    let response = sim.app.clone().oneshot(request).await.expect("infallible");
    assert!(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .is_err()
    );
    assert_eq!(sim.handle.stats().faults_injected, 2);
}
