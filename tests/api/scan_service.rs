//! Every RPC, end to end, on the happy path.

use std::time::Duration;

use scan_gateway::grpc::pb::{self, ActionStatus, scan_service_client::ScanServiceClient};

use crate::helpers::*;

#[tokio::test]
async fn run_scan_streams_every_status_to_succeeded_then_ends_ok() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    let (updates, end) = run_to_end(&mut app.client, &machine).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        statuses(&updates),
        [
            ActionStatus::Pending,
            ActionStatus::InProgress,
            ActionStatus::Succeeded
        ]
    );
    let first =
        action_of(updates[0].update.as_ref()).expect("the first event is the created action");
    assert_eq!(first.machine_id, machine);
    assert_eq!(first.r#type, "RunAntiVirusScan");
    assert_eq!(first.scope, "Quick");
    assert_eq!(first.requestor_comment, "integration test");
    assert!(first.creation_time.is_some());
}

#[tokio::test]
async fn start_scan_returns_the_pending_action_and_get_scan_reads_it() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    let started = app
        .client
        .start_scan(start_request(&machine))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(started.status(), ActionStatus::Pending);

    let read = app
        .client
        .get_scan(pb::GetScanRequest {
            fresh: true,
            action_id: started.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(read.id, started.id);
    assert_eq!(read.machine_id, machine);
}

#[tokio::test]
async fn watch_scan_follows_an_existing_action_to_its_end() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    let started = app
        .client
        .start_scan(start_request(&machine))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let stream = app
        .client
        .watch_scan(pb::WatchScanRequest {
            action_id: started.id.to_uppercase(),
        })
        .await
        .unwrap()
        .into_inner();
    let (updates, end) = collect(stream).await;
    assert!(end.is_ok(), "{end:?}");
    let last = action_of(updates.last().and_then(|u| u.update.as_ref()))
        .expect("the last event is an action");
    assert_eq!(last.id, started.id);
    assert_eq!(last.status(), ActionStatus::Succeeded);
}

#[tokio::test]
async fn cancel_scan_cancels_a_running_scan() {
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_secs(60);
    let mut app = spawn_gateway(spawn_simulator(config).await).await;
    let machine = app.sim.machine(0);
    let started = app
        .client
        .start_scan(start_request(&machine))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let cancelled = app
        .client
        .cancel_scan(pb::CancelScanRequest {
            action_id: started.id.clone(),
            comment: "changed my mind".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(cancelled.id, started.id);
    assert_eq!(cancelled.status(), ActionStatus::Cancelled);
    assert_eq!(cancelled.cancellation_comment, "changed my mind");
    assert!(cancelled.cancellation_time.is_some());
}

#[tokio::test]
async fn list_scans_filters_by_machine_and_pages() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    let other = app.sim.machine(1);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (updates, end) = run_to_end(&mut app.client, &machine).await;
        assert!(end.is_ok(), "{end:?}");
        let a = action_of(updates[0].update.as_ref()).expect("action first");
        ids.push(a.id);
    }
    app.client.start_scan(start_request(&other)).await.unwrap();

    let first = app
        .client
        .list_scans(pb::ListScansRequest {
            machine_id: machine.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.actions.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = app
        .client
        .list_scans(pb::ListScansRequest {
            machine_id: machine.clone(),
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.actions.len(), 1);
    assert!(second.next_page_token.is_empty());

    let listed: Vec<_> = first
        .actions
        .iter()
        .chain(&second.actions)
        .map(|a| a.id.clone())
        .collect();
    // Newest first.
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(listed, expected);
    assert!(
        first
            .actions
            .iter()
            .chain(&second.actions)
            .all(|a| a.machine_id == machine && a.r#type == "RunAntiVirusScan")
    );

    let succeeded = app
        .client
        .list_scans(pb::ListScansRequest {
            status: ActionStatus::Pending as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        succeeded
            .actions
            .iter()
            .all(|a| a.status() == ActionStatus::Pending)
    );
    assert!(succeeded.actions.iter().any(|a| a.machine_id == other));
}

#[tokio::test]
async fn a_second_scan_on_a_busy_machine_follows_the_running_one() {
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_secs(60);
    let mut app = spawn_gateway(spawn_simulator(config).await).await;
    let machine = app.sim.machine(0);
    let first = app
        .client
        .start_scan(start_request(&machine))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let second = app
        .client
        .start_scan(start_request(&machine))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(second.id, first.id, "no second scan is started");
}

#[tokio::test]
async fn the_same_request_id_returns_the_same_action() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    let mut request = start_request(&machine);
    request.request_id = "ticket-4711".into();
    let (mut first, mut second) = (app.client.clone(), app.client.clone());
    let (a, b) = tokio::join!(
        first.start_scan(request.clone()),
        second.start_scan(request.clone()),
    );
    let (a, b) = (
        a.unwrap().into_inner().action.unwrap(),
        b.unwrap().into_inner().action.unwrap(),
    );
    assert_eq!(a.id, b.id);
    assert_eq!(
        app.sim.handle.stats().run_scan,
        1,
        "exactly one upstream call"
    );
    // Later, after the scan finished, the key still names the same action.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = app
        .client
        .start_scan(request)
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    assert_eq!(again.id, a.id);
    assert_eq!(again.status(), ActionStatus::Succeeded);
}

#[tokio::test]
async fn a_revoked_token_is_replaced_and_the_call_succeeds() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    app.client
        .start_scan(start_request(&machine))
        .await
        .unwrap();
    let tokens_before = app.sim.handle.stats().tokens_issued;
    app.sim.handle.revoke_tokens();
    let listed = app
        .client
        .list_scans(pb::ListScansRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!listed.actions.is_empty());
    assert_eq!(app.sim.handle.stats().tokens_issued, tokens_before + 1);
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_secs(60);
    let mut app = spawn_gateway(spawn_simulator(config).await).await;
    let machine = app.sim.machine(0);
    let mut stream = app
        .client
        .run_scan(run_request(&machine))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.update.is_some());
    let stopped = tokio::spawn(app.shutdown());
    let (_, end) = collect(stream).await;
    let status = end.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("WatchScan"),
        "{}",
        status.message()
    );
    stopped.await.unwrap().expect("a clean stop");
}

#[tokio::test]
async fn admin_port_serves_health_readiness_and_metrics() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    let _ = run_to_end(&mut app.client, &machine).await;
    let _ = app
        .client
        .get_scan(pb::GetScanRequest {
            fresh: true,
            action_id: "not-a-guid".into(),
        })
        .await;

    assert_eq!(http_get(app.admin_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(app.admin_addr, "/readyz").await.0, 200);
    let metrics = app.metrics().await;
    for expected in [
        r#"scan_gateway_grpc_server_requests_total{method="RunScan",code="OK"} 1"#,
        r#"scan_gateway_grpc_server_requests_total{method="GetScan",code="INVALID_ARGUMENT"} 1"#,
        r#"scan_gateway_upstream_requests_total{api="run_antivirus_scan",status="201"} 1"#,
        r#"scan_gateway_scans_finished_total{status="Succeeded"} 1"#,
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn health_service_reports_serving() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "defender.scan.v1.ScanService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn run_scan_reports_its_place_in_the_quota_queue_before_the_action() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    args.quota = Some("1/400ms".into());
    let mut app = spawn_gateway_with(sim, args).await;
    app.client
        .start_scan(start_request(&app.sim.machine(0)))
        .await
        .unwrap();
    let (updates, end) = run_to_end(&mut app.client, &app.sim.machine(1)).await;
    assert!(end.is_ok(), "{end:?}");
    let Some(pb::scan_update::Event::Queued(queued)) =
        updates[0].update.as_ref().and_then(|u| u.event.clone())
    else {
        panic!("the first event is `queued`: {updates:?}");
    };
    assert_eq!(queued.position, 1);
    assert!(queued.estimated_start.is_some());
    assert_eq!(statuses(&updates).last(), Some(&ActionStatus::Succeeded));
}

#[tokio::test]
async fn a_stalled_subscriber_holds_no_one_back_and_still_gets_the_final_status() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    let action = app
        .client
        .start_scan(start_request(&machine))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let watch = |client: &mut ScanServiceClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        let action_id = action.id.clone();
        async move {
            client
                .watch_scan(pb::WatchScanRequest { action_id })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut stalled = watch(&mut app.client).await;
    let first = stalled.message().await.unwrap().unwrap();
    assert!(first.update.is_some());
    // The other subscriber follows the scan to its end while the stalled one reads nothing.
    let (updates, end) = collect(watch(&mut app.client).await).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        updates
            .iter()
            .rev()
            .find_map(|u| action_of(u.update.as_ref()))
            .map(|a| a.status()),
        Some(ActionStatus::Succeeded)
    );
    // Now it reads: it may have skipped a status, but it ends with the final one.
    let (rest, end) = collect(stalled).await;
    assert!(end.is_ok(), "{end:?}");
    let last = action_of(rest.last().and_then(|u| u.update.as_ref()))
        .unwrap_or_else(|| panic!("the stalled stream ends with an action: {rest:?}"));
    assert_eq!(last.status(), ActionStatus::Succeeded);
}

#[tokio::test]
async fn concurrent_scan_requests_for_one_machine_start_one_scan() {
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_secs(60);
    let app = spawn_gateway(spawn_simulator(config).await).await;
    let machine = app.sim.machine(0);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut client = app.client.clone();
            let request = start_request(&machine);
            tokio::spawn(async move { client.start_scan(request).await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for call in calls {
        ids.insert(call.await.unwrap().unwrap().into_inner().action.unwrap().id);
    }
    assert_eq!(ids.len(), 1, "every caller gets the one scan: {ids:?}");
    assert_eq!(app.sim.handle.stats().actions_created, 1);
}

#[tokio::test]
async fn with_following_off_a_busy_machine_is_already_exists() {
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_secs(60);
    let sim = spawn_simulator(config).await;
    let mut args = settings_for(&sim);
    args.follow_running_scans = Some(false);
    let mut app = spawn_gateway_with(sim, args).await;
    let machine = app.sim.machine(0);
    app.client
        .start_scan(start_request(&machine))
        .await
        .unwrap();
    let status = app
        .client
        .start_scan(start_request(&machine))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
}

#[tokio::test]
async fn a_stream_past_its_watch_time_ends_with_deadline_exceeded_and_the_last_status() {
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_secs(60);
    let sim = spawn_simulator(config).await;
    let mut args = settings_for(&sim);
    args.max_watch = Some(Duration::from_millis(300));
    let mut app = spawn_gateway_with(sim, args).await;
    let (updates, end) = run_to_end(&mut app.client, &app.sim.machine(0)).await;
    assert_eq!(statuses(&updates), [ActionStatus::Pending]);
    let status = end.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata["last_status"], "Pending");
}
