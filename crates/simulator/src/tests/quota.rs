//! The per-API quota over HTTP: 429 with `Retry-After` at exactly the 101st call of a minute.

use std::time::Duration;

use axum::http::{Method, StatusCode};

use super::*;

#[tokio::test(start_paused = true)]
async fn the_101st_call_in_a_minute_is_throttled_until_the_window_slides() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    for i in 0..100 {
        let resp = sim
            .call(Method::GET, "/api/machineactions?$top=1", &token, None)
            .await;
        assert_eq!(resp.status, StatusCode::OK, "call {}", i + 1);
        tokio::time::advance(Duration::from_millis(200)).await;
    }
    // 20 s after the first call; it leaves the window 40 s from now.
    let resp = sim
        .call(Method::GET, "/api/machineactions?$top=1", &token, None)
        .await;
    assert_error(&resp, StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
    assert_eq!(resp.header("retry-after"), Some("40"));
    assert_eq!(
        resp.message(),
        "Request quota exceeded. Retry after 40 seconds."
    );

    // Another API has its own quota.
    let other = sim
        .get_action(&token, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37")
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);

    // Refused calls don't count: retrying early keeps getting a shrinking Retry-After.
    tokio::time::advance(Duration::from_millis(39_500)).await;
    let resp = sim
        .call(Method::GET, "/api/machineactions?$top=1", &token, None)
        .await;
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.header("retry-after"), Some("1"));
    tokio::time::advance(Duration::from_millis(500)).await;
    let resp = sim
        .call(Method::GET, "/api/machineactions?$top=1", &token, None)
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let stats = sim.handle.stats();
    assert_eq!(
        (stats.list_actions, stats.throttled, stats.get_action),
        (103, 2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn the_quota_can_be_switched_off() {
    let sim = Sim::new(SimulatorConfig {
        quota: vec![],
        ..config()
    });
    let token = sim.token().await;
    for _ in 0..150 {
        let resp = sim
            .call(Method::GET, "/api/machineactions?$top=1", &token, None)
            .await;
        assert_eq!(resp.status, StatusCode::OK);
    }
}
