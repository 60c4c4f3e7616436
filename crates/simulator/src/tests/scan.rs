//! `runAntiVirusScan`: authentication, the 201 body, input validation and duplicates.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};

use super::*;
use crate::DuplicateMode;

const KEYS: [&str; 21] = [
    "@odata.context",
    "id",
    "type",
    "title",
    "requestor",
    "requestorComment",
    "status",
    "machineId",
    "computerDnsName",
    "creationDateTimeUtc",
    "lastUpdateDateTimeUtc",
    "cancellationRequestor",
    "cancellationComment",
    "cancellationDateTimeUtc",
    "errorHResult",
    "scope",
    "externalId",
    "requestSource",
    "relatedFileInfo",
    "commands",
    "troubleshootInfo",
];

/// Every key present, in the observed order.
pub(super) fn assert_action_keys(body: &str) {
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    let object = json.as_object().unwrap();
    assert_eq!(object.len(), KEYS.len(), "{body}");
    let positions: Vec<usize> = KEYS
        .iter()
        .map(|k| {
            body.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} missing: {body}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "key order: {body}"
    );
}

#[tokio::test(start_paused = true)]
async fn run_scan_returns_201_with_the_full_pending_action() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let machine = sim.machine();
    tokio::time::advance(Duration::from_nanos(331_820_789)).await;
    let resp = sim.scan(&token, &machine, "Quick").await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    assert_action_keys(&resp.body);
    let json = resp.json();
    assert_eq!(
        json["@odata.context"],
        "https://api.security.microsoft.com/api/$metadata#MachineActions/$entity"
    );
    assert!(uuid::Uuid::try_parse(json["id"].as_str().unwrap()).is_ok());
    assert_eq!(json["type"], "RunAntiVirusScan");
    assert_eq!(json["title"], serde_json::Value::Null);
    assert_eq!(json["requestor"], "scan-gateway-simulated-app");
    assert_eq!(json["requestorComment"], "test scan");
    assert_eq!(json["status"], "Pending");
    assert_eq!(json["machineId"], machine.as_str());
    assert!(
        json["computerDnsName"]
            .as_str()
            .unwrap()
            .ends_with(".contoso.local")
    );
    assert_eq!(json["creationDateTimeUtc"], "2026-11-26T09:14:05.3318207Z");
    assert_eq!(
        json["lastUpdateDateTimeUtc"],
        "2026-11-26T09:14:05.3318207Z"
    );
    assert_eq!(json["errorHResult"], 0);
    assert_eq!(json["scope"], "Quick");
    assert_eq!(json["requestSource"], "PublicApi");
    assert_eq!(json["commands"], serde_json::json!([]));
    let stats = sim.handle.stats();
    assert_eq!((stats.run_scan, stats.actions_created), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_version_segment_and_upper_case_ids_are_accepted() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let machine = sim.machine().to_ascii_uppercase();
    let body = r#"{"Comment":"c","ScanType":"Full"}"#;
    let uri = format!("/api/v1.0/machines/{machine}/runAntiVirusScan");
    let resp = sim.call(Method::POST, &uri, &token, Some(body)).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    assert_eq!(resp.json()["machineId"], machine.to_ascii_lowercase());
    assert_eq!(resp.json()["scope"], "Full");
    let id = resp.json()["id"].as_str().unwrap().to_ascii_uppercase();
    let got = sim
        .call(
            Method::GET,
            &format!("/api/v1.0/machineactions/{id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn missing_bad_expired_and_revoked_tokens_get_401() {
    let sim = Sim::new(config());
    let machine = sim.machine();
    let uri = format!("/api/machines/{machine}/runAntiVirusScan");
    let no_header = Request::post(&uri).body(Body::empty()).unwrap();
    assert_error(
        &sim.send(no_header).await,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
    );
    let basic = Request::post(&uri)
        .header(header::AUTHORIZATION, "Basic abc")
        .body(Body::empty())
        .unwrap();
    assert_error(
        &sim.send(basic).await,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
    );
    assert_error(
        &sim.scan("forged", &machine, "Quick").await,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
    );

    let token = sim.token().await;
    tokio::time::advance(Duration::from_secs(3598)).await;
    assert_eq!(
        sim.get_action(&token, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let expired = sim
        .get_action(&token, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37")
        .await;
    assert_error(&expired, StatusCode::UNAUTHORIZED, "Unauthorized");
    assert!(expired.message().contains("expired"), "{}", expired.body);

    let token = sim.token().await;
    sim.handle.revoke_tokens();
    assert_error(
        &sim.scan(&token, &machine, "Quick").await,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
    );
    // Rejected calls are counted too.
    assert_eq!(sim.handle.stats().run_scan, 4);
}

#[tokio::test(start_paused = true)]
async fn bodies_must_use_the_exact_property_names_and_values() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let uri = format!("/api/machines/{}/runAntiVirusScan", sim.machine());
    let cases = [
        (
            r#"{"comment":"c","ScanType":"Quick"}"#,
            "MissingRequiredParameter",
            "Parameter Comment is missing.",
        ),
        (
            r#"{"Comment":"c","scanType":"Quick"}"#,
            "MissingRequiredParameter",
            "Parameter ScanType is missing.",
        ),
        (
            r#"{"Comment":null,"ScanType":"Quick"}"#,
            "MissingRequiredParameter",
            "Parameter Comment is missing.",
        ),
        (
            r#"{"Comment":"c","ScanType":"quick"}"#,
            "InvalidRequestBody",
            "Invalid request body.",
        ),
        (
            r#"{"Comment":"c","ScanType":"Deep"}"#,
            "InvalidRequestBody",
            "Invalid request body.",
        ),
        (
            r#"{"Comment":5,"ScanType":"Quick"}"#,
            "InvalidRequestBody",
            "Invalid request body.",
        ),
        (
            r#"["Comment","ScanType"]"#,
            "InvalidRequestBody",
            "Invalid request body.",
        ),
        (
            "Comment=c&ScanType=Quick",
            "InvalidRequestBody",
            "Invalid request body.",
        ),
        ("", "InvalidRequestBody", "Invalid request body."),
    ];
    for (body, code, message) in cases {
        let resp = sim.call(Method::POST, &uri, &token, Some(body)).await;
        assert_error(&resp, StatusCode::BAD_REQUEST, code);
        assert_eq!(resp.message(), message, "{body}");
    }
    let no_content_type = Request::post(&uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(r#"{"Comment":"c","ScanType":"Quick"}"#))
        .unwrap();
    assert_error(
        &sim.send(no_content_type).await,
        StatusCode::BAD_REQUEST,
        "InvalidRequestBody",
    );
    assert_eq!(sim.handle.stats().actions_created, 0);
}

#[tokio::test(start_paused = true)]
async fn bad_unknown_and_unsupported_machines() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    for bad in [
        "123123123",
        "1e5bc9d7e413ddd7902c2932e418702b84d0cc0z",
        "ws-finance-017.contoso.local",
    ] {
        let resp = sim.scan(&token, bad, "Quick").await;
        assert_error(&resp, StatusCode::BAD_REQUEST, "InvalidInput");
        assert_eq!(resp.message(), format!("Invalid input {bad}."));
    }
    let unknown = sim
        .scan(&token, "1e5bc9d7e413ddd7902c2932e418702b84d0cc07", "Quick")
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "ResourceNotFound");
    let server = sim.handle.unsupported_machine_id().unwrap();
    let resp = sim.scan(&token, &server, "Quick").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "OsPlatformNotSupported");
    assert!(
        resp.message().starts_with("OS Platform WindowsServer20"),
        "{}",
        resp.message()
    );
    assert!(
        resp.message()
            .ends_with(" isn't supported for this action.")
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_scan_while_one_runs_is_refused_by_default() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let machine = sim.machine();
    let first = sim.scan(&token, &machine, "Quick").await;
    assert_eq!(first.status, StatusCode::CREATED);
    tokio::time::advance(Duration::from_secs(60)).await;
    let second = sim.scan(&token, &machine, "Full").await;
    assert_error(
        &second,
        StatusCode::BAD_REQUEST,
        "ActiveRequestAlreadyExists",
    );
    assert_eq!(second.message(), "Action is already in progress");
    // Once the first has finished (30 s + 3 min), a new scan is accepted.
    tokio::time::advance(Duration::from_secs(150)).await;
    let third = sim.scan(&token, &machine, "Full").await;
    assert_eq!(third.status, StatusCode::CREATED);
    assert_ne!(third.json()["id"], first.json()["id"]);
}

#[tokio::test(start_paused = true)]
async fn duplicates_can_return_the_existing_action_or_alternate() {
    let sim = Sim::new(SimulatorConfig {
        duplicate_mode: DuplicateMode::ReturnExisting,
        ..config()
    });
    let token = sim.token().await;
    let machine = sim.machine();
    let first = sim.scan(&token, &machine, "Quick").await.json();
    let again = sim.scan(&token, &machine, "Quick").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_action_keys(&again.body);
    assert_eq!(again.json()["id"], first["id"]);
    assert_eq!(sim.handle.stats().actions_created, 1);

    let sim = Sim::new(SimulatorConfig {
        duplicate_mode: DuplicateMode::Alternate,
        ..config()
    });
    let token = sim.token().await;
    let machine = sim.machine();
    assert_eq!(
        sim.scan(&token, &machine, "Quick").await.status,
        StatusCode::CREATED
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(sim.scan(&token, &machine, "Quick").await.status.as_u16());
    }
    assert_eq!(seen, [400, 201, 400, 201]);
}

#[tokio::test(start_paused = true)]
async fn error_targets_are_fresh_guids_and_unknown_paths_are_404() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let a = sim.scan(&token, "bad", "Quick").await.json();
    let b = sim.scan(&token, "bad", "Quick").await.json();
    assert_ne!(a["error"]["target"], b["error"]["target"]);
    let resp = sim.call(Method::GET, "/api/machine", &token, None).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "NotFound");
    assert_eq!(sim.handle.stats().other, 1);
}

#[tokio::test(start_paused = true)]
async fn undecodable_path_segments_are_invalid_input() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let resp = sim.scan(&token, "%FF%FE", "Quick").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "InvalidInput");
    let resp = sim.get_action(&token, "%C3%28").await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "InvalidInput");
}

/// The id of the first scan a fresh simulator with `config` creates.
async fn first_action_id(config: SimulatorConfig) -> String {
    let sim = Sim::new(config);
    let token = sim.token().await;
    let machine = sim.machine();
    let resp = sim.scan(&token, &machine, "Quick").await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    resp.json()["id"].as_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn runs_without_a_seed_get_action_ids_of_their_own_and_a_seed_repeats_them() {
    // The same seed: the same ids, run after run.
    assert_eq!(
        first_action_id(config()).await,
        first_action_id(config()).await
    );
    // Fresh action ids (what a run without --seed gets): another id each run, same machines.
    let (one, two) = (
        config().with_fresh_action_ids(),
        config().with_fresh_action_ids(),
    );
    let machines = |c: &SimulatorConfig| Sim::new(c.clone()).machine();
    assert_eq!(machines(&one), machines(&two));
    assert_ne!(first_action_id(one).await, first_action_id(two).await);
}
