//! One test per row of design.md's error table that the simulator can produce.

use std::time::Duration;

use scan_gateway::grpc::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

/// A well-formed device id the simulator does not know.
const UNKNOWN_MACHINE: &str = "0000000000000000000000000000000000000000";
/// A well-formed action id the simulator never issued.
const UNKNOWN_ACTION: &str = "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37";

#[tokio::test]
async fn unknown_machine_is_not_found_with_resource_info() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .start_scan(start_request(UNKNOWN_MACHINE))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let info = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(info.resource_type, "machine");
    assert_eq!(info.resource_name, UNKNOWN_MACHINE);
}

#[tokio::test]
async fn unknown_action_is_not_found_with_resource_info() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .get_scan(pb::GetScanRequest {
            fresh: true,
            action_id: UNKNOWN_ACTION.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let info = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(info.resource_type, "machine action");
    assert_eq!(info.resource_name, UNKNOWN_ACTION);
}

#[tokio::test]
async fn unsupported_platform_is_failed_precondition_with_the_upstream_code() {
    let mut app = spawn_app().await;
    let server = app
        .sim
        .handle
        .unsupported_machine_id()
        .expect("the inventory has a machine that cannot scan");
    let status = app
        .client
        .start_scan(start_request(&server))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "OsPlatformNotSupported");
    assert_eq!(info.metadata["upstream_status"], "400");
    assert!(info.metadata.contains_key("upstream_target"));
}

#[tokio::test]
async fn cancelling_a_finished_scan_is_failed_precondition() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    let (updates, _) = run_to_end(&mut app.client, &machine).await;
    let action = action_of(updates[0].update.as_ref()).expect("action first");
    let status = app
        .client
        .cancel_scan(pb::CancelScanRequest {
            action_id: action.id,
            comment: "too late".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test]
async fn refused_credentials_are_internal_upstream_auth_without_the_secret() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    args.client_secret = Some(secret("wrong-secret-value-123"));
    let mut app = spawn_gateway_with(sim, args).await;
    let machine = app.sim.machine(0);
    let status = app
        .client
        .start_scan(start_request(&machine))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "UPSTREAM_AUTH");
    assert!(
        status.message().contains("AZURE_CLIENT_SECRET"),
        "{}",
        status.message()
    );
    assert!(!format!("{status:?}").contains("wrong-secret-value-123"));
    assert_eq!(app.sim.api_requests(), 0, "no API call without a token");
}

#[tokio::test]
async fn quota_wait_beyond_the_deadline_is_resource_exhausted_with_retry_info() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    args.quota = Some("1/1h".into());
    let mut app = spawn_gateway_with(sim, args).await;
    app.client
        .list_scans(pb::ListScansRequest::default())
        .await
        .unwrap();
    let mut request = tonic::Request::new(pb::ListScansRequest::default());
    request.set_timeout(Duration::from_secs(5));
    let status = app.client.list_scans(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(delay > Duration::from_secs(3500), "{delay:?}");
    assert_eq!(app.sim.handle.stats().list_actions, 1);
}

#[tokio::test]
async fn upstream_429_is_unavailable_with_retry_info() {
    // The simulator's quota is smaller than the gateway's, so the upstream refuses first.
    let mut config = fast_simulator();
    config.quota = vec![(1, Duration::from_secs(60))];
    let mut app = spawn_gateway(spawn_simulator(config).await).await;
    app.client
        .list_scans(pb::ListScansRequest::default())
        .await
        .unwrap();
    // Retry-After (up to 60 s) is past this call's deadline, so it is not retried.
    let mut request = tonic::Request::new(pb::ListScansRequest::default());
    request.set_timeout(Duration::from_secs(5));
    let status = app.client.list_scans(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo from Retry-After");
    assert!(
        delay >= Duration::from_secs(1) && delay <= Duration::from_secs(60),
        "{delay:?}"
    );
}

#[tokio::test]
async fn upstream_5xx_is_unavailable() {
    let app = spawn_app().await;
    let mut faults = defender_simulator::Faults::default();
    faults.run_scan.error_rate = 1.0;
    app.sim.handle.set_faults(faults);
    let mut client = app.client.clone();
    let machine = app.sim.machine(0);
    let status = client
        .start_scan(start_request(&machine))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("server error"),
        "{}",
        status.message()
    );
    // Defender's own answer is in the details, for support cases.
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "UPSTREAM_UNAVAILABLE");
    assert_eq!(info.metadata["upstream_status"], "500");
}

#[tokio::test]
async fn connection_failure_is_unavailable() {
    let sim = spawn_simulator(fast_simulator()).await;
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut args = settings_for(&sim);
    args.api_base_url = Some(format!("http://{closed}"));
    let mut app = spawn_gateway_with(sim, args).await;
    let machine = app.sim.machine(0);
    let status = app
        .client
        .start_scan(start_request(&machine))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("Defender could not be reached"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn token_endpoint_down_is_unavailable() {
    let app = spawn_app().await;
    let mut faults = defender_simulator::Faults::default();
    faults.token.error_rate = 1.0;
    app.sim.handle.set_faults(faults);
    let mut client = app.client.clone();
    let machine = app.sim.machine(0);
    let status = client
        .start_scan(start_request(&machine))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("token endpoint"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_caller_deadline_that_passes_upstream_is_deadline_exceeded() {
    let app = spawn_app().await;
    let mut faults = defender_simulator::Faults::default();
    faults.get_action.latency = Duration::from_secs(3);
    app.sim.handle.set_faults(faults);
    let mut client = app.client.clone();
    let mut request = tonic::Request::new(pb::GetScanRequest {
        fresh: true,
        action_id: UNKNOWN_ACTION.into(),
    });
    // 1 s: the gateway keeps 100 ms of it back for its own answer, which a loaded runner's
    // write stalls could eat at 300 ms (30 ms back; seen once in CI).
    request.set_timeout(Duration::from_secs(1));
    let status = client.get_scan(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The gateway's answer, not the client's own timer.
    assert!(
        status.message().contains("deadline passed"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn upstream_403_is_permission_denied_upstream_forbidden() {
    let app = spawn_app().await;
    let mut faults = defender_simulator::Faults::default();
    faults.run_scan.forbidden = true;
    app.sim.handle.set_faults(faults);
    let mut client = app.client.clone();
    let status = client
        .start_scan(start_request(&app.sim.machine(0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "UPSTREAM_FORBIDDEN");
    assert!(
        status.message().contains("Machine.Scan"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn an_upstream_429_within_the_deadline_is_retried_after_retry_after() {
    let mut config = fast_simulator();
    config.quota = vec![(1, Duration::from_secs(1))];
    let mut app = spawn_gateway(spawn_simulator(config).await).await;
    for _ in 0..2 {
        let mut request = tonic::Request::new(pb::ListScansRequest::default());
        request.set_timeout(Duration::from_secs(10));
        app.client.list_scans(request).await.unwrap();
    }
    let stats = app.sim.handle.stats();
    assert_eq!(stats.list_actions, 3, "one 429, then the retry");
    assert_eq!(stats.throttled, 1);
    // The caller never saw it, the metric does (the alert on 429s reads it).
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("scan_gateway_upstream_throttled_total{api=\"list_machine_actions\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_lost_answer_to_the_scan_request_finds_the_scan_instead_of_starting_another() {
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_secs(60);
    let app = spawn_gateway(spawn_simulator(config).await).await;
    let mut faults = defender_simulator::Faults::default();
    // Defender creates the scan, but the answer is a 500.
    faults.run_scan.lost_response_rate = 1.0;
    app.sim.handle.set_faults(faults);
    let mut client = app.client.clone();
    let action = client
        .start_scan(start_request(&app.sim.machine(0)))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(action.machine_id, app.sim.machine(0));
    assert_eq!(action.requestor_comment, "integration test");
    let stats = app.sim.handle.stats();
    assert_eq!(stats.run_scan, 1, "no blind retry of the POST");
    assert_eq!(stats.actions_created, 1);
}

#[tokio::test]
async fn a_5xx_that_created_nothing_is_unavailable_after_one_post() {
    let app = spawn_app().await;
    let mut faults = defender_simulator::Faults::default();
    faults.run_scan.error_rate = 1.0;
    app.sim.handle.set_faults(faults);
    let mut client = app.client.clone();
    let status = client
        .start_scan(start_request(&app.sim.machine(0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let stats = app.sim.handle.stats();
    assert_eq!(stats.run_scan, 1, "no blind retry of the POST");
    assert_eq!(
        stats.list_actions, 1,
        "one look for the scan it might have created"
    );
    assert_eq!(stats.actions_created, 0);
}
