//! The fault suite: one test per fault the simulator can inject. Each asserts the gRPC outcome,
//! that no scan was started twice, and that nothing Defender accepted was lost: a scan the
//! simulator created was reported to the caller, or is returned by a retry with the same
//! `request_id` once the fault is over.
//!
//! Rates are 1.0 (or faults are switched by the test), never a matter of luck. Scans stay
//! `Pending` for a minute, so a duplicate POST would meet a running scan and show up.

use std::time::Duration;

use defender_simulator::{EndpointFaults, Faults, ResetPoint, SimulatorConfig};
use scan_gateway::grpc::pb;
use tokio::time::Instant;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

/// The fast simulator, but scans stay `Pending` long enough to meet any retry.
fn slow_scans() -> SimulatorConfig {
    SimulatorConfig {
        pending_duration: Duration::from_secs(60),
        ..fast_simulator()
    }
}

/// Every request's connection reset at `at`.
fn resets(at: ResetPoint) -> EndpointFaults {
    EndpointFaults {
        reset_rate: 1.0,
        reset_at: at,
        ..EndpointFaults::default()
    }
}

async fn spawn_faulty(faults: Faults) -> TestGateway {
    let app = spawn_gateway(spawn_simulator(slow_scans()).await).await;
    app.sim.handle.set_faults(faults);
    app
}

fn keyed(machine: &str, request_id: &str) -> pb::StartScanRequest {
    pb::StartScanRequest {
        request_id: request_id.to_owned(),
        ..start_request(machine)
    }
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Starts a keyed scan: the action's id, or the status it failed with.
async fn start(
    app: &TestGateway,
    machine: &str,
    request_id: &str,
    timeout: Duration,
) -> Result<String, tonic::Status> {
    let mut client = app.client.clone();
    let response = client
        .start_scan(with_timeout(keyed(machine, request_id), timeout))
        .await?;
    Ok(response
        .into_inner()
        .action
        .expect("a started scan carries its action")
        .id)
}

/// The ids of the machine's scans in Defender, read through the gateway.
async fn scans_of(app: &TestGateway, machine: &str) -> Vec<String> {
    let mut client = app.client.clone();
    client
        .list_scans(pb::ListScansRequest {
            machine_id: machine.to_owned(),
            ..pb::ListScansRequest::default()
        })
        .await
        .expect("listing works once the fault is over")
        .into_inner()
        .actions
        .into_iter()
        .map(|a| a.id)
        .collect()
}

/// The invariants every fault must keep, checked once the fault is over: Defender holds at
/// most one scan for `machine`; the caller got its id (`reported`), or a retry with the same
/// `request_id` returns it; and after that retry there is exactly one scan.
async fn assert_no_duplicate_and_nothing_lost(
    app: &TestGateway,
    machine: &str,
    request_id: &str,
    reported: Option<&str>,
) {
    app.sim.handle.set_faults(Faults::default());
    let accepted = scans_of(app, machine).await;
    assert!(accepted.len() <= 1, "scan started twice: {accepted:?}");
    if let Some(id) = reported {
        assert_eq!(
            accepted,
            [id],
            "the reported scan is the one Defender holds"
        );
    }
    let retried = start(app, machine, request_id, Duration::from_secs(5))
        .await
        .expect("a retry with the same request_id succeeds once the fault is over");
    if let Some(accepted) = accepted.first() {
        assert_eq!(&retried, accepted, "the accepted scan was not lost");
    }
    assert_eq!(
        scans_of(app, machine).await,
        [retried],
        "exactly one scan in the end"
    );
}

#[tokio::test]
async fn latency_within_the_deadline_succeeds_and_beyond_it_is_deadline_exceeded() {
    let app = spawn_faulty(Faults {
        run_scan: EndpointFaults {
            latency: Duration::from_millis(300),
            ..EndpointFaults::default()
        },
        ..Faults::default()
    })
    .await;
    let (patient, hurried) = (app.sim.machine(0), app.sim.machine(1));

    let before = Instant::now();
    let id = start(&app, &patient, "latency-1", Duration::from_secs(5))
        .await
        .expect("300 ms of latency fits a 5 s deadline");
    assert!(before.elapsed() >= Duration::from_millis(300));

    app.sim.handle.set_faults(Faults {
        run_scan: EndpointFaults {
            latency: Duration::from_secs(3),
            ..EndpointFaults::default()
        },
        ..Faults::default()
    });
    let status = start(&app, &hurried, "latency-2", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("deadline passed"),
        "the gateway's answer, not the client's timer: {}",
        status.message()
    );

    assert_no_duplicate_and_nothing_lost(&app, &patient, "latency-1", Some(&id)).await;
    // The slow POST is still asleep in the simulator; the retry starts the scan, and the slow
    // one, should it wake, meets it as "already in progress" instead of starting a second.
    assert_no_duplicate_and_nothing_lost(&app, &hurried, "latency-2", None).await;
}

#[tokio::test]
async fn upstream_500s_everywhere_are_unavailable_after_one_post_and_one_lookup() {
    let app = spawn_faulty(Faults::defender_api(EndpointFaults {
        error_rate: 1.0,
        ..EndpointFaults::default()
    }))
    .await;
    let machine = app.sim.machine(0);
    let status = start(&app, &machine, "errors-1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("the scan may have started"),
        "{}",
        status.message()
    );
    let stats = app.sim.handle.stats();
    assert_eq!(stats.run_scan, 1, "a 500 may have acted: no blind resend");
    assert_eq!(
        stats.list_actions, 1,
        "one look for a scan it may have made"
    );
    assert_eq!((stats.actions_created, stats.faults_injected), (0, 2));
    assert_no_duplicate_and_nothing_lost(&app, &machine, "errors-1", None).await;
}

#[tokio::test]
async fn a_429_storm_is_unavailable_with_retry_info_then_retried_after_retry_after() {
    let storm = Faults {
        run_scan: EndpointFaults {
            throttle_rate: 1.0,
            retry_after: Duration::from_secs(1),
            ..EndpointFaults::default()
        },
        ..Faults::default()
    };
    let app = spawn_faulty(storm).await;
    let machine = app.sim.machine(0);

    // Retry-After (1 s) is past this call's deadline: not retried, the delay is passed on.
    let status = start(&app, &machine, "storm-1", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let delay = status.get_details_retry_info().and_then(|r| r.retry_delay);
    assert_eq!(delay, Some(Duration::from_secs(1)), "{status:?}");
    assert_eq!(app.sim.handle.stats().run_scan, 1);

    // With time to spare the gateway waits out each Retry-After; the storm ends after one
    // more 429, and the scan goes through once.
    let retry = {
        let app_client = app.client.clone();
        let machine = machine.clone();
        tokio::spawn(async move {
            let mut client = app_client;
            let before = Instant::now();
            let response = client
                .start_scan(with_timeout(
                    keyed(&machine, "storm-1"),
                    Duration::from_secs(10),
                ))
                .await;
            (response, before.elapsed())
        })
    };
    let until = Instant::now() + Duration::from_secs(10);
    while app.sim.handle.stats().faults_injected < 2 {
        assert!(Instant::now() < until, "the gateway never retried");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.sim.handle.set_faults(Faults::default());
    let (response, took) = retry.await.expect("the call does not panic");
    let id = response
        .expect("the scan starts once the storm is over")
        .into_inner()
        .action
        .expect("action")
        .id;
    assert!(
        took >= Duration::from_secs(1),
        "Retry-After honoured: {took:?}"
    );
    let stats = app.sim.handle.stats();
    assert_eq!(stats.run_scan, 3, "two 429s, then the scan");
    assert_eq!(stats.actions_created, 1);
    assert_eq!(
        stats.throttled, 0,
        "injected 429s, not the simulator's quota"
    );
    assert_no_duplicate_and_nothing_lost(&app, &machine, "storm-1", Some(&id)).await;
}

#[tokio::test]
async fn a_connection_reset_before_the_scan_took_effect_is_unavailable_and_starts_nothing() {
    let app = spawn_faulty(Faults {
        run_scan: resets(ResetPoint::Before),
        ..Faults::default()
    })
    .await;
    let machine = app.sim.machine(0);
    let status = start(&app, &machine, "reset-before-1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("the connection to Defender broke while asking it to start the scan"),
        "a transport error, not an HTTP status: {}",
        status.message()
    );
    let stats = app.sim.handle.stats();
    // The gateway cannot tell a reset before the effect from one after: it looks, finds
    // nothing, and leaves the resend to the caller.
    assert_eq!((stats.run_scan, stats.list_actions), (1, 1));
    assert_eq!((stats.actions_created, stats.faults_injected), (0, 1));
    assert_no_duplicate_and_nothing_lost(&app, &machine, "reset-before-1", None).await;
}

#[tokio::test]
async fn a_connection_reset_after_the_scan_took_effect_finds_the_scan_instead_of_starting_another()
{
    let app = spawn_faulty(Faults {
        run_scan: resets(ResetPoint::After),
        ..Faults::default()
    })
    .await;
    let machine = app.sim.machine(0);
    let id = start(&app, &machine, "reset-after-1", Duration::from_secs(5))
        .await
        .expect("the scan Defender created is found");
    let stats = app.sim.handle.stats();
    assert_eq!(
        (stats.run_scan, stats.list_actions),
        (1, 1),
        "no second POST"
    );
    assert_eq!((stats.actions_created, stats.faults_injected), (1, 1));
    assert_no_duplicate_and_nothing_lost(&app, &machine, "reset-after-1", Some(&id)).await;
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_is_unavailable_and_calls_no_api() {
    // Down three ways: 503s, dropped connections, and garbled answers. Each gateway keeps its
    // token failure for a backoff, so each way gets its own pair.
    tokio::join!(
        token_endpoint_down(EndpointFaults {
            error_rate: 1.0,
            ..EndpointFaults::default()
        }),
        token_endpoint_down(EndpointFaults {
            reset_rate: 1.0,
            ..EndpointFaults::default()
        }),
        token_endpoint_down(EndpointFaults {
            malformed_rate: 1.0,
            ..EndpointFaults::default()
        }),
    );
}

async fn token_endpoint_down(token: EndpointFaults) {
    let app = spawn_faulty(Faults {
        token: token.clone(),
        ..Faults::default()
    })
    .await;
    let machine = app.sim.machine(0);
    let status = start(&app, &machine, "token-1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{token:?}: {status:?}");
    assert!(
        status.message().contains("token endpoint"),
        "{}",
        status.message()
    );
    assert_eq!(app.sim.handle.stats().faults_injected, 1, "{token:?}");

    // The endpoint is back; the gateway retries it after its backoff (at most 1 s after one
    // failure). Until then a retry fails fast, without touching the API.
    app.sim.handle.set_faults(Faults::default());
    let until = Instant::now() + Duration::from_secs(5);
    let id = loop {
        match start(&app, &machine, "token-1", Duration::from_secs(5)).await {
            Ok(id) => break id,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert_eq!(app.sim.api_requests(), 0, "no API call without a token");
                assert!(Instant::now() < until, "the token was never fetched again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(app.sim.handle.stats().run_scan, 1);
    assert_no_duplicate_and_nothing_lost(&app, &machine, "token-1", Some(&id)).await;
}

#[tokio::test]
async fn malformed_json_is_unavailable_on_reads_and_resolved_on_the_scan_post() {
    let garbled = |faults_of: fn(&mut Faults) -> &mut EndpointFaults| {
        let mut faults = Faults::default();
        faults_of(&mut faults).malformed_rate = 1.0;
        faults
    };
    let app = spawn_faulty(garbled(|f| &mut f.run_scan)).await;
    let machine = app.sim.machine(0);

    // The POST took effect; its garbled answer is an unknown outcome, resolved by a lookup.
    let id = start(&app, &machine, "malformed-1", Duration::from_secs(5))
        .await
        .expect("the scan behind the garbled answer is found");
    let stats = app.sim.handle.stats();
    assert_eq!(
        (stats.run_scan, stats.list_actions),
        (1, 1),
        "no second POST"
    );
    assert_eq!(stats.actions_created, 1);

    let mut client = app.client.clone();
    app.sim.handle.set_faults(garbled(|f| &mut f.get_action));
    let status = client
        .get_scan(pb::GetScanRequest {
            fresh: true,
            action_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("could not be read"),
        "{}",
        status.message()
    );

    app.sim.handle.set_faults(garbled(|f| &mut f.list_actions));
    let status = client
        .list_scans(pb::ListScansRequest {
            machine_id: machine.clone(),
            ..pb::ListScansRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("could not be read"),
        "{}",
        status.message()
    );
    assert_eq!(app.sim.handle.stats().faults_injected, 3);
    assert_no_duplicate_and_nothing_lost(&app, &machine, "malformed-1", Some(&id)).await;
}

#[tokio::test]
async fn a_403_is_permission_denied_and_starts_nothing() {
    let app = spawn_faulty(Faults {
        run_scan: EndpointFaults {
            forbidden: true,
            ..EndpointFaults::default()
        },
        ..Faults::default()
    })
    .await;
    let machine = app.sim.machine(0);
    let status = start(&app, &machine, "forbidden-1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "UPSTREAM_FORBIDDEN");
    assert_eq!(info.metadata["upstream_status"], "403");
    let stats = app.sim.handle.stats();
    assert_eq!(
        (stats.run_scan, stats.list_actions),
        (1, 0),
        "a 403 certainly did nothing: no lookup, no resend"
    );
    assert_eq!(stats.actions_created, 0);
    assert_no_duplicate_and_nothing_lost(&app, &machine, "forbidden-1", None).await;
}

/// Cancels `action_id` through the gateway.
async fn cancel(app: &TestGateway, action_id: &str) -> Result<pb::MachineAction, tonic::Status> {
    let mut client = app.client.clone();
    client
        .cancel_scan(pb::CancelScanRequest {
            action_id: action_id.to_owned(),
            comment: "fault suite".into(),
        })
        .await
        .map(|r| {
            r.into_inner()
                .action
                .expect("a cancel answers with the action")
        })
}

#[tokio::test]
async fn a_cancel_whose_answer_is_lost_is_read_back_and_a_retry_is_idempotent() {
    let app = spawn_faulty(Faults::default()).await;
    let machine = app.sim.machine(0);
    let id = start(&app, &machine, "cancel-1", Duration::from_secs(5))
        .await
        .unwrap();
    // The cancel takes effect, but the connection breaks before its answer.
    app.sim.handle.set_faults(Faults {
        cancel: resets(ResetPoint::After),
        ..Faults::default()
    });
    let cancelled = cancel(&app, &id).await.expect("the cancel is found done");
    assert_eq!(cancelled.status, pb::ActionStatus::Cancelled as i32);
    let stats = app.sim.handle.stats();
    assert_eq!(
        (stats.cancel, stats.get_action),
        (1, 1),
        "one cancel, one read back"
    );

    // A caller that retries anyway gets the cancelled action, not an error.
    app.sim.handle.set_faults(Faults::default());
    let again = cancel(&app, &id)
        .await
        .expect("cancelling twice is idempotent");
    assert_eq!(again.status, pb::ActionStatus::Cancelled as i32);
    // A cancel that really did not happen still fails.
    app.sim.handle.set_faults(Faults {
        cancel: resets(ResetPoint::Before),
        ..Faults::default()
    });
    let other = start(
        &app,
        &app.sim.machine(1),
        "cancel-2",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let status = cancel(&app, &other).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}
