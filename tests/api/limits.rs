//! Inbound limits: message size, per-caller request rate and open streams, streams per
//! connection. Each refusal is a status the caller can act on, counted in the metrics, and
//! costs no upstream call.

use std::time::Duration;

use scan_gateway::{config::ConfigArgs, grpc::pb};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

async fn gateway_with(limits: impl FnOnce(&mut ConfigArgs)) -> TestGateway {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    limits(&mut args);
    spawn_gateway_with(sim, args).await
}

fn refused(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("scan_gateway_grpc_server_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a counter value"))
}

/// A quick scan started on the first machine: its action.
async fn started_scan(app: &mut TestGateway) -> pb::MachineAction {
    let machine = app.sim.machine(0);
    app.client
        .start_scan(start_request(&machine))
        .await
        .expect("the scan starts")
        .into_inner()
        .action
        .expect("with its action")
}

fn get(action_id: &str) -> pb::GetScanRequest {
    pb::GetScanRequest {
        fresh: true,
        action_id: action_id.into(),
    }
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_out_of_range_and_goes_nowhere() {
    let mut app = gateway_with(|a| a.max_message_bytes = Some(8192)).await;
    let machine = app.sim.machine(0);
    let mut request = start_request(&machine);
    request.comment = "x".repeat(9000);
    let status = app.client.start_scan(request).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("8192"), "{}", status.message());
    assert_eq!(app.sim.api_requests(), 0);
    // The connection is fine and a normal request passes.
    app.client
        .start_scan(start_request(&machine))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_caller_over_its_rate_is_told_when_to_retry() {
    let mut app = gateway_with(|a| {
        a.caller_rate = Some(0.5);
        a.caller_burst = Some(3);
    })
    .await;
    let id = "7b1d6a3e-8b55-4c2d-9a3f-1b2c3d4e5f60";
    for _ in 0..3 {
        // Unknown action: NOT_FOUND, but it passed the limit.
        let status = app.client.get_scan(get(id)).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    let upstream_before = app.sim.api_requests();
    let status = app.client.get_scan(get(id)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "CALLER_RATE_LIMITED");
    assert_eq!(info.metadata["caller"], "ip:127.0.0.1");
    let retry = status.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.expect("a delay");
    assert!(
        delay > Duration::from_millis(1000) && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
    assert_eq!(
        app.sim.api_requests(),
        upstream_before,
        "refused before any upstream call"
    );
    assert_eq!(refused(&app.metrics().await, "caller_rate"), 1);
}

#[tokio::test]
async fn a_caller_may_hold_only_so_many_streams() {
    let mut app = gateway_with(|a| a.max_streams_per_caller = Some(2)).await;
    let action = started_scan(&mut app).await;
    let watch = || pb::WatchScanRequest {
        action_id: action.id.clone(),
    };
    let first = app.client.watch_scan(watch()).await.unwrap().into_inner();
    let second = app.client.watch_scan(watch()).await.unwrap().into_inner();
    let status = app.client.watch_scan(watch()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.get_details_error_info().expect("ErrorInfo").reason,
        "CALLER_STREAM_LIMIT"
    );
    // Unary calls are not streams.
    app.client.get_scan(get(&action.id)).await.unwrap();
    // A stream that ends (here: read to its terminal status) frees its slot.
    let (_, end) = collect(first).await;
    end.unwrap();
    let third = app.client.watch_scan(watch()).await.unwrap().into_inner();
    drop(second);
    drop(third);
    assert_eq!(refused(&app.metrics().await, "caller_streams"), 1);
}

#[tokio::test]
async fn a_connection_past_its_stream_limit_waits_for_a_free_stream() {
    let mut app = gateway_with(|a| a.max_streams_per_connection = Some(2)).await;
    let action = started_scan(&mut app).await;
    let watch = || pb::WatchScanRequest {
        action_id: action.id.clone(),
    };
    let first = app.client.watch_scan(watch()).await.unwrap().into_inner();
    let _second = app.client.watch_scan(watch()).await.unwrap().into_inner();
    // The third stream on the same connection is held by the client until one ends.
    let mut client = app.client.clone();
    let request = watch();
    let mut third = tokio::spawn(async move { client.watch_scan(request).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "the third stream must wait for a free one"
    );
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("a freed stream lets the third one start")
        .unwrap();
    let (_, end) = collect(third.unwrap().into_inner()).await;
    end.unwrap();
}
