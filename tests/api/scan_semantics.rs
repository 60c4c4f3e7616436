//! What a scan request means on a machine that is already scanning: a running scan answers
//! a request only when it is at least as thorough, and the answer says it was reused.

use std::time::Duration;

use defender_simulator::DuplicateMode;
use scan_gateway::grpc::pb::{self, ActionStatus};

use crate::helpers::*;

/// A gateway over a simulator whose scans stay pending for `pending` and that answers a
/// second scan on a busy machine as `mode` says.
async fn busy_machine_app(pending: Duration, mode: DuplicateMode) -> TestGateway {
    let mut config = fast_simulator();
    config.pending_duration = pending;
    config.duplicate_mode = mode;
    spawn_gateway(spawn_simulator(config).await).await
}

fn full(mut request: pb::StartScanRequest) -> pb::StartScanRequest {
    request.scan_type = pb::ScanType::Full as i32;
    request.comment = "someone else's full scan".into();
    request
}

#[tokio::test]
async fn a_quick_request_while_a_full_scan_runs_follows_the_full_one_marked_reused() {
    // Defender answers a busy machine either way; both must come to the same.
    for mode in [DuplicateMode::Error, DuplicateMode::ReturnExisting] {
        let mut app = busy_machine_app(Duration::from_millis(500), mode).await;
        let machine = app.sim.machine(0);
        let running = app
            .client
            .start_scan(full(start_request(&machine)))
            .await
            .unwrap()
            .into_inner();
        assert!(!running.reused, "{mode:?}: the caller's own scan");
        let running = running.action.unwrap();

        let keyed = pb::StartScanRequest {
            request_id: format!("ticket-reused-{mode:?}"),
            ..start_request(&machine)
        };
        let quick = app
            .client
            .start_scan(keyed.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(quick.reused, "{mode:?}");
        assert_eq!(quick.action.unwrap().id, running.id, "{mode:?}");
        // A retry with the same key names the same scan, still someone else's.
        let retried = app.client.start_scan(keyed).await.unwrap().into_inner();
        assert!(retried.reused, "{mode:?}: the key remembers it was reused");
        assert_eq!(retried.action.unwrap().id, running.id, "{mode:?}");

        let (updates, end) = run_to_end(&mut app.client, &machine).await;
        assert!(end.is_ok(), "{mode:?}: {end:?}");
        let first = action_of(updates[0].update.as_ref()).unwrap();
        assert_eq!(
            (first.id.as_str(), first.scope.as_str()),
            (running.id.as_str(), "Full")
        );
        assert!(updates[0].reused, "{mode:?}: the first event says so");
        assert!(
            updates[1..].iter().all(|u| !u.reused),
            "{mode:?}: only the first"
        );
        assert_eq!(statuses(&updates).last(), Some(&ActionStatus::Succeeded));
        assert_eq!(app.sim.handle.stats().actions_created, 1, "{mode:?}");
    }
}

fn quick(mut request: pb::StartScanRequest) -> pb::StartScanRequest {
    request.comment = "someone else's quick scan".into();
    request
}

#[tokio::test]
async fn a_full_run_while_a_quick_scan_runs_waits_for_it_then_starts_a_full_one() {
    for mode in [DuplicateMode::Error, DuplicateMode::ReturnExisting] {
        let mut app = busy_machine_app(Duration::from_millis(300), mode).await;
        let machine = app.sim.machine(0);
        let running = app
            .client
            .start_scan(quick(start_request(&machine)))
            .await
            .unwrap()
            .into_inner()
            .action
            .unwrap();

        let mut request = run_request(&machine);
        request.scan_type = pb::ScanType::Full as i32;
        let mut request = tonic::Request::new(request);
        request.set_timeout(Duration::from_secs(20));
        let stream = app.client.run_scan(request).await.unwrap().into_inner();
        let (updates, end) = collect(stream).await;
        assert!(end.is_ok(), "{mode:?}: {end:?}");

        let Some(pb::scan_update::Event::Waiting(waiting)) =
            updates[0].update.as_ref().and_then(|u| u.event.clone())
        else {
            panic!("{mode:?}: the stream first says what it waits for: {updates:?}");
        };
        let blocking = waiting.action.unwrap();
        assert_eq!(
            (blocking.id.as_str(), blocking.scope.as_str()),
            (running.id.as_str(), "Quick")
        );

        let first = action_of(updates[1].update.as_ref()).unwrap();
        assert_ne!(first.id, running.id, "{mode:?}: a second action");
        assert_eq!(first.scope, "Full");
        assert!(!updates[1].reused, "{mode:?}: created by this request");
        assert_eq!(statuses(&updates).last(), Some(&ActionStatus::Succeeded));
        assert_eq!(app.sim.handle.stats().actions_created, 2, "{mode:?}");
        // Started only once the Quick scan had ended.
        let quick_ended = app
            .client
            .get_scan(pb::GetScanRequest {
                fresh: true,
                action_id: running.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .action
            .unwrap();
        assert_eq!(quick_ended.status(), ActionStatus::Succeeded);
        assert!(
            first.creation_time.unwrap().seconds * 1_000_000_000
                + i64::from(first.creation_time.unwrap().nanos)
                >= quick_ended.last_update_time.unwrap().seconds * 1_000_000_000
                    + i64::from(quick_ended.last_update_time.unwrap().nanos),
            "{mode:?}: the Full scan was created after the Quick one ended"
        );
    }
}

#[tokio::test]
async fn a_full_start_while_a_quick_scan_runs_starts_it_once_the_quick_one_ends() {
    let mut app = busy_machine_app(Duration::from_millis(300), DuplicateMode::Error).await;
    let machine = app.sim.machine(0);
    let running = app
        .client
        .start_scan(quick(start_request(&machine)))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let mut request = tonic::Request::new(full(start_request(&machine)));
    request.set_timeout(Duration::from_secs(20));
    let started = app.client.start_scan(request).await.unwrap().into_inner();
    assert!(!started.reused);
    let started = started.action.unwrap();
    assert_ne!(started.id, running.id);
    assert_eq!(started.scope, "Full");
    assert_eq!(app.sim.handle.stats().actions_created, 2);
}

#[tokio::test]
async fn a_full_start_with_a_short_deadline_while_a_quick_scan_runs_is_failed_precondition_naming_it()
 {
    let mut app = busy_machine_app(Duration::from_secs(60), DuplicateMode::Error).await;
    let machine = app.sim.machine(0);
    let running = app
        .client
        .start_scan(quick(start_request(&machine)))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let mut request = tonic::Request::new(full(start_request(&machine)));
    request.set_timeout(Duration::from_millis(1500));
    let status = app.client.start_scan(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.reason, "WEAKER_SCAN_RUNNING");
    assert_eq!(info.metadata["action_id"], running.id);
    assert_eq!(info.metadata["scope"], "Quick");
    assert_eq!(info.metadata["requested_scan_type"], "Full");
    let retry = tonic_types::StatusExt::get_error_details(&status)
        .retry_info()
        .cloned();
    assert!(
        retry.is_none(),
        "a pending scan has no end in sight: {retry:?}"
    );
    assert_eq!(
        app.sim.handle.stats().actions_created,
        1,
        "nothing else started"
    );
}

#[tokio::test]
async fn a_refusal_for_a_running_quick_scan_says_when_it_likely_ends() {
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_millis(50);
    config.quick_scan_duration = Duration::from_secs(3);
    let mut app = spawn_gateway(spawn_simulator(config).await).await;
    // Three Quick scans seen to succeed: the gateway expects one to take about 3 s.
    let mut seeds = Vec::new();
    for machine in 1..=3 {
        let mut client = app.client.clone();
        let machine = app.sim.machine(machine);
        seeds.push(tokio::spawn(async move {
            run_to_end(&mut client, &machine).await
        }));
    }
    for seed in seeds {
        let (_, end) = seed.await.unwrap();
        assert!(end.is_ok(), "{end:?}");
    }
    let machine = app.sim.machine(0);
    let (mut client, watched) = (app.client.clone(), machine.clone());
    let mut running = client
        .run_scan(run_request(&watched))
        .await
        .unwrap()
        .into_inner();
    // Until the Quick scan runs on the device (a pending one may wait for days).
    loop {
        let update = running.message().await.unwrap().expect("a status");
        if action_of(update.update.as_ref())
            .is_some_and(|a| a.status == ActionStatus::InProgress as i32)
        {
            break;
        }
    }
    let mut request = tonic::Request::new(full(start_request(&machine)));
    request.set_timeout(Duration::from_millis(1500));
    let status = app.client.start_scan(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let delay = tonic_types::StatusExt::get_error_details(&status)
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("an end in sight");
    // About 3 s from its creation; the refusal came about 0.5 s after it (the deadline less
    // the second kept for the Full scan's own POST).
    assert!(
        delay > Duration::from_millis(1500) && delay < Duration::from_secs(3),
        "{delay:?}"
    );
}

#[tokio::test]
async fn a_caller_that_leaves_while_waiting_for_a_quick_scan_starts_nothing() {
    let mut app = busy_machine_app(Duration::from_millis(400), DuplicateMode::Error).await;
    let machine = app.sim.machine(0);
    app.client
        .start_scan(quick(start_request(&machine)))
        .await
        .unwrap();
    let mut request = run_request(&machine);
    request.scan_type = pb::ScanType::Full as i32;
    let mut stream = app.client.run_scan(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        first.update.and_then(|u| u.event),
        Some(pb::scan_update::Event::Waiting(_))
    ));
    drop(stream);
    // Well past the Quick scan's end: a waiting start that outlived its caller would have
    // started the Full scan by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.sim.handle.stats().actions_created, 1);
}
