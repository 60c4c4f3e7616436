//! The action lifecycle on the paused clock, outcome shares, offline devices and cancellation.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::Value;

use super::scan::assert_action_keys;
use super::*;
use crate::ActionStatus;

/// Lifecycle tests jump days ahead; a token that outlives them keeps them short.
fn long_tokens() -> SimulatorConfig {
    SimulatorConfig {
        token_lifetime: Duration::from_secs(30 * 86_400),
        ..config()
    }
}

async fn advance(secs: u64) {
    tokio::time::advance(Duration::from_secs(secs)).await;
}

async fn status_of(sim: &Sim, token: &str, id: &str) -> Value {
    let resp = sim.get_action(token, id).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_action_keys(&resp.body);
    resp.json()
}

#[tokio::test(start_paused = true)]
async fn a_quick_scan_goes_pending_in_progress_succeeded() {
    let sim = Sim::new(long_tokens());
    let token = sim.token().await;
    let created = sim.scan(&token, &sim.machine(), "Quick").await.json();
    let id = created["id"].as_str().unwrap();

    advance(29).await;
    let a = status_of(&sim, &token, id).await;
    assert_eq!(
        (a["status"].as_str(), a["lastUpdateDateTimeUtc"].as_str()),
        (Some("Pending"), Some("2026-11-26T09:14:05Z"))
    );
    advance(1).await;
    let a = status_of(&sim, &token, id).await;
    assert_eq!(
        (a["status"].as_str(), a["lastUpdateDateTimeUtc"].as_str()),
        (Some("InProgress"), Some("2026-11-26T09:14:35Z"))
    );
    advance(179).await;
    assert_eq!(status_of(&sim, &token, id).await["status"], "InProgress");
    advance(1).await;
    let a = status_of(&sim, &token, id).await;
    assert_eq!(a["status"], "Succeeded");
    assert_eq!(a["lastUpdateDateTimeUtc"], "2026-11-26T09:17:35Z");
    assert_eq!(a["creationDateTimeUtc"], created["creationDateTimeUtc"]);
    assert_eq!(a["errorHResult"], 0);
    // Final is final.
    advance(86_400).await;
    assert_eq!(status_of(&sim, &token, id).await["status"], "Succeeded");
}

#[tokio::test(start_paused = true)]
async fn a_full_scan_runs_for_the_full_duration() {
    let sim = Sim::new(SimulatorConfig::demo());
    let token = sim.token().await;
    let id = sim.scan(&token, &sim.machine(), "Full").await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(9).await;
    assert_eq!(status_of(&sim, &token, &id).await["status"], "InProgress");
    advance(1).await;
    assert_eq!(status_of(&sim, &token, &id).await["status"], "Succeeded");
}

async fn outcomes(config: SimulatorConfig, scans: usize) -> Vec<String> {
    let sim = Sim::new(config);
    let token = sim.token().await;
    let machines = sim.handle.demo_machine_ids(scans);
    let mut ids = Vec::new();
    for m in &machines {
        ids.push(
            sim.scan(&token, m, "Quick").await.json()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    advance(3600).await;
    let mut out = Vec::new();
    for id in ids {
        out.push(
            status_of(&sim, &token, &id).await["status"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    out
}

#[tokio::test(start_paused = true)]
async fn outcome_shares_decide_the_final_status_deterministically() {
    let all_failed = outcomes(
        SimulatorConfig {
            failed_share: 1.0,
            ..long_tokens()
        },
        3,
    )
    .await;
    assert_eq!(all_failed, ["Failed"; 3]);
    let all_timed_out = outcomes(
        SimulatorConfig {
            timed_out_share: 1.0,
            ..long_tokens()
        },
        3,
    )
    .await;
    assert_eq!(all_timed_out, ["TimeOut"; 3]);
    let mixed = SimulatorConfig {
        failed_share: 0.3,
        timed_out_share: 0.3,
        ..long_tokens()
    };
    let first = outcomes(mixed.clone(), 30).await;
    assert_eq!(first, outcomes(mixed, 30).await);
    for status in ["Failed", "TimeOut", "Succeeded"] {
        assert!(first.iter().any(|s| s == status), "{status} in {first:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn failed_scans_report_an_hresult() {
    let sim = Sim::new(SimulatorConfig {
        failed_share: 1.0,
        ..long_tokens()
    });
    let token = sim.token().await;
    let id = sim.scan(&token, &sim.machine(), "Quick").await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(status_of(&sim, &token, &id).await["errorHResult"], 0);
    advance(210).await;
    let a = status_of(&sim, &token, &id).await;
    assert_eq!(a["status"], "Failed");
    assert_ne!(a["errorHResult"], 0);
}

#[tokio::test(start_paused = true)]
async fn an_offline_device_stays_pending_then_times_out() {
    let sim = Sim::new(long_tokens());
    let token = sim.token().await;
    let offline = sim.handle.offline_machine_id().unwrap();
    let id = sim.scan(&token, &offline, "Quick").await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(3 * 86_400 - 1).await;
    assert_eq!(status_of(&sim, &token, &id).await["status"], "Pending");
    advance(1).await;
    let a = status_of(&sim, &token, &id).await;
    assert_eq!(a["status"], "TimeOut");
    assert_eq!(a["lastUpdateDateTimeUtc"], "2026-11-29T09:14:05Z");
}

#[tokio::test(start_paused = true)]
async fn cancel_turns_the_same_action_cancelled_once() {
    let sim = Sim::new(long_tokens());
    let token = sim.token().await;
    let machine = sim.machine();
    let id = sim.scan(&token, &machine, "Quick").await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(45).await;
    let uri = format!("/api/machineactions/{id}/cancel");
    let body = r#"{"Comment": "Cancelled by scan-gateway: caller deadline exceeded"}"#;
    let resp = sim.call(Method::POST, &uri, &token, Some(body)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_action_keys(&resp.body);
    let a = resp.json();
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["status"], "Cancelled");
    assert_eq!(a["cancellationRequestor"], "scan-gateway-simulated-app");
    assert_eq!(
        a["cancellationComment"],
        "Cancelled by scan-gateway: caller deadline exceeded"
    );
    assert_eq!(a["cancellationDateTimeUtc"], "2026-11-26T09:14:50Z");
    assert_eq!(a["lastUpdateDateTimeUtc"], "2026-11-26T09:14:50Z");
    // It stays cancelled, where it would otherwise have succeeded.
    advance(3600).await;
    assert_eq!(status_of(&sim, &token, &id).await["status"], "Cancelled");
    assert_eq!(sim.handle.action_status(&id), Some(ActionStatus::Cancelled));

    let again = sim.call(Method::POST, &uri, &token, None).await;
    assert_error(&again, StatusCode::BAD_REQUEST, "BadRequest");
    assert_eq!(
        again.message(),
        format!("Action {id} is already in a final state")
    );
    // The device is free for a new scan.
    assert_eq!(
        sim.scan(&token, &machine, "Quick").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_without_a_body_and_of_finished_or_unknown_actions() {
    let sim = Sim::new(long_tokens());
    let token = sim.token().await;
    let machines = sim.handle.demo_machine_ids(2);
    let a = sim.scan(&token, &machines[0], "Quick").await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = sim
        .call(
            Method::POST,
            &format!("/api/machineactions/{a}/cancel"),
            &token,
            None,
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(resp.json()["cancellationComment"], Value::Null);

    let b = sim.scan(&token, &machines[1], "Quick").await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    advance(210).await;
    let done = sim
        .call(
            Method::POST,
            &format!("/api/machineactions/{b}/cancel"),
            &token,
            Some("{}"),
        )
        .await;
    assert_error(&done, StatusCode::BAD_REQUEST, "BadRequest");

    let unknown = "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37";
    let resp = sim
        .call(
            Method::POST,
            &format!("/api/machineactions/{unknown}/cancel"),
            &token,
            None,
        )
        .await;
    assert_error(&resp, StatusCode::NOT_FOUND, "ResourceNotFound");
    let resp = sim
        .call(
            Method::POST,
            "/api/machineactions/not-a-guid/cancel",
            &token,
            None,
        )
        .await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "InvalidInput");
    let resp = sim
        .call(
            Method::POST,
            &format!("/api/machineactions/{a}/cancel"),
            &token,
            Some("{nope"),
        )
        .await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "InvalidRequestBody");
    assert_eq!(sim.handle.stats().cancel, 5);
}

#[tokio::test(start_paused = true)]
async fn get_action_answers_404_and_400_and_handle_can_finish_actions() {
    let sim = Sim::new(long_tokens());
    let token = sim.token().await;
    let resp = sim
        .get_action(&token, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37")
        .await;
    assert_error(&resp, StatusCode::NOT_FOUND, "ResourceNotFound");
    assert_error(
        &sim.get_action(&token, "42").await,
        StatusCode::BAD_REQUEST,
        "InvalidInput",
    );

    let id = sim.scan(&token, &sim.machine(), "Quick").await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!sim.handle.finish_action(&id, ActionStatus::InProgress));
    assert!(sim.handle.finish_action(&id, ActionStatus::Failed));
    assert!(!sim.handle.finish_action(&id, ActionStatus::Succeeded));
    assert_eq!(status_of(&sim, &token, &id).await["status"], "Failed");
}
