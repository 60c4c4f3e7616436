//! The start's handling of Defender's "already in progress" and of reused keys, over a fake
//! Defender.

use super::*;
use crate::{
    domain::{Comment, MachineId, RequestId, ScanRequest, ScanType},
    upstream::{Request, Response},
};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::{service_fn, util::BoxCloneSyncService};

const MACHINE: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

fn json(status: u16, body: serde_json::Value) -> Response {
    let mut response = http::Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response
}

fn action(id: &str, status: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "type": "RunAntiVirusScan", "status": status, "machineId": MACHINE,
        "creationDateTimeUtc": "2026-11-26T09:14:05.3318207Z"
    })
}

/// Scans over a fake Defender that refuses every scan as "already in progress" and lists
/// `listed`; counts the scan POSTs.
fn busy_upstream(listed: Vec<serde_json::Value>) -> (Scans, Arc<AtomicUsize>) {
    let posts = Arc::new(AtomicUsize::new(0));
    let counter = posts.clone();
    let fake = service_fn(move |request: Request| {
        let listed = listed.clone();
        let counter = counter.clone();
        async move {
            Ok::<_, upstream::Error>(if request.method() == http::Method::POST {
                counter.fetch_add(1, Ordering::SeqCst);
                json(
                    400,
                    serde_json::json!({"error": {"code": "ActiveRequestAlreadyExists",
                            "message": "Action is already in progress", "target": "t-1"}}),
                )
            } else {
                json(200, serde_json::json!({ "value": listed }))
            })
        }
    });
    let client = DefenderClient::new(
        url::Url::parse("https://api.security.microsoft.com").unwrap(),
        BoxCloneSyncService::new(fake),
        crate::clock::Clock::system(),
    );
    let (_, shutdown) = tokio::sync::watch::channel(false);
    let watcher = Watcher::start(
        client.clone(),
        Clock::system(),
        crate::watcher::WatcherConfig {
            interval: Duration::from_millis(10),
            list_call_spacing: Duration::ZERO,
            max_failures: 1,
        },
        crate::watcher::WatchMetrics::default(),
        shutdown.clone(),
    );
    let scans = Scans::new(
        client,
        Clock::system(),
        ScansConfig {
            max_watch: Duration::from_secs(60),
            follow_running: true,
            ride_out: Duration::from_secs(600),
            read_freshness: Duration::from_secs(10),
        },
        ScanMetrics::default(),
        watcher,
        crate::idempotency::LocalKeys::default(),
        None,
    );
    (scans, posts)
}

fn request(request_id: Option<&str>, scan_type: ScanType) -> ScanRequest {
    ScanRequest {
        machine_id: MachineId::parse("machine_id", MACHINE).unwrap(),
        scan_type,
        comment: Comment::parse("comment", "test").unwrap(),
        request_id: request_id
            .map(|k| RequestId::parse_optional("request_id", k).unwrap().unwrap()),
    }
}

#[tokio::test]
async fn already_in_progress_resolves_to_the_newest_running_action() {
    let (scans, _) = busy_upstream(vec![
        action("0d9e8f71-2c3b-4a5d-8e6f-7a1b2c3d4e5f", "Succeeded"),
        action("7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37", "InProgress"),
    ]);
    let action = scans
        .start(&request(None, ScanType::Quick), &CallContext::default())
        .await
        .unwrap()
        .action;
    assert_eq!(action.id, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37");
}

#[tokio::test]
async fn already_in_progress_without_a_running_action_is_already_exists() {
    let (scans, _) = busy_upstream(vec![action(
        "0d9e8f71-2c3b-4a5d-8e6f-7a1b2c3d4e5f",
        "Succeeded",
    )]);
    let err = scans
        .start(&request(None, ScanType::Quick), &CallContext::default())
        .await
        .unwrap_err();
    let Error::AlreadyExists { machine_id, source } = &err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(machine_id, MACHINE);
    assert_eq!(source.code, "ActiveRequestAlreadyExists");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
}

#[tokio::test]
async fn a_request_id_reused_for_another_scan_is_invalid() {
    let (scans, posts) = busy_upstream(vec![action(
        "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37",
        "Pending",
    )]);
    scans
        .start(
            &request(Some("k-1"), ScanType::Quick),
            &CallContext::default(),
        )
        .await
        .unwrap();
    let err = scans
        .start(
            &request(Some("k-1"), ScanType::Full),
            &CallContext::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(v) if v[0].field == "request_id"),
        "{err:?}"
    );
    assert_eq!(posts.load(Ordering::SeqCst), 1);
}

/// Scans over a fake Defender that lists one action, `status` at the time, and answers 503
/// while `down` (or 403 while `refusing`); the watcher refreshes every 10 s.
struct Outages {
    scans: Scans,
    status: Arc<std::sync::Mutex<&'static str>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// The watcher runs while this lives.
    _running: tokio::sync::watch::Sender<bool>,
}

const FOLLOWED: &str = "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37";

fn outages(ride_out: Duration, failure: u16) -> Outages {
    let status = Arc::new(std::sync::Mutex::new("Pending"));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (listed, failing) = (status.clone(), down.clone());
    let fake = service_fn(move |_request: Request| {
        let (listed, failing) = (listed.clone(), failing.clone());
        async move {
            Ok::<_, upstream::Error>(if failing.load(Ordering::SeqCst) {
                json(
                    failure,
                    serde_json::json!({"error": {"code": "Down", "message": "down"}}),
                )
            } else {
                let status = *listed.lock().unwrap();
                json(
                    200,
                    serde_json::json!({ "value": [action(FOLLOWED, status)] }),
                )
            })
        }
    });
    let client = DefenderClient::new(
        url::Url::parse("https://api.security.microsoft.com").unwrap(),
        BoxCloneSyncService::new(fake),
        Clock::system(),
    );
    let (running, shutdown) = tokio::sync::watch::channel(false);
    let watcher = Watcher::start(
        client.clone(),
        Clock::system(),
        crate::watcher::WatcherConfig {
            interval: Duration::from_secs(10),
            list_call_spacing: Duration::ZERO,
            max_failures: 3,
        },
        crate::watcher::WatchMetrics::default(),
        shutdown,
    );
    let scans = Scans::new(
        client,
        Clock::system(),
        ScansConfig {
            max_watch: Duration::from_secs(24 * 3600),
            follow_running: true,
            ride_out,
            read_freshness: Duration::from_secs(10),
        },
        ScanMetrics::default(),
        watcher,
        crate::idempotency::LocalKeys::default(),
        None,
    );
    Outages {
        scans,
        status,
        down,
        _running: running,
    }
}

fn pending_action() -> MachineAction {
    let wire: crate::upstream::model::WireAction =
        serde_json::from_value(action(FOLLOWED, "Pending")).unwrap();
    MachineAction::try_from(wire).unwrap()
}

/// The follower's next event, within a (paused) hour.
async fn next_event(follower: &mut Follower) -> Option<Result<ScanEvent, Error>> {
    tokio::time::timeout(Duration::from_secs(3600), follower.next())
        .await
        .expect("an event within the hour")
}

#[tokio::test(start_paused = true)]
async fn a_stream_rides_out_a_30_s_outage_and_delivers_the_final_status_after_it() {
    let upstream = outages(Duration::from_secs(600), 503);
    let mut follower = upstream
        .scans
        .follow(pending_action(), &CallContext::default());
    let first = next_event(&mut follower).await.unwrap().unwrap();
    assert!(matches!(first, ScanEvent::Action(a) if a.status == ActionStatus::Pending));

    let began = tokio::time::Instant::now();
    upstream.down.store(true, Ordering::SeqCst);
    let Some(Ok(ScanEvent::Delayed { reason, .. })) = next_event(&mut follower).await else {
        panic!("the stream is told that its updates are delayed");
    };
    assert!(reason.contains("http_status"), "{reason}");

    // The scan ends during the outage; the API answers again 30 s after it began.
    *upstream.status.lock().unwrap() = "Succeeded";
    tokio::time::sleep_until(began + Duration::from_secs(30)).await;
    upstream.down.store(false, Ordering::SeqCst);
    let Some(Ok(ScanEvent::Action(last))) = next_event(&mut follower).await else {
        panic!("the final status after the outage");
    };
    assert_eq!(last.status, ActionStatus::Succeeded);
    assert!(next_event(&mut follower).await.is_none(), "the stream ends");
}

#[tokio::test(start_paused = true)]
async fn an_outage_longer_than_the_ride_out_ends_the_stream_with_the_last_known_status() {
    let upstream = outages(Duration::from_secs(120), 503);
    let mut follower = upstream
        .scans
        .follow(pending_action(), &CallContext::default());
    next_event(&mut follower).await.unwrap().unwrap();
    upstream.down.store(true, Ordering::SeqCst);
    let Some(Ok(ScanEvent::Delayed {
        since, gives_up_at, ..
    })) = next_event(&mut follower).await
    else {
        panic!("delayed first");
    };
    let ride_out = gives_up_at - since;
    assert!(
        (ride_out - time::Duration::seconds(120)).abs() < time::Duration::milliseconds(1),
        "{ride_out}"
    );
    let told = tokio::time::Instant::now();
    let Some(Err(Error::OutageOutlasted { status, .. })) = next_event(&mut follower).await else {
        panic!("ended by the outage");
    };
    assert_eq!(status, "Pending");
    let waited = told.elapsed();
    assert!(
        waited <= Duration::from_secs(120) && waited > Duration::from_secs(100),
        "{waited:?}"
    );
    let status = tonic::Status::from(Error::OutageOutlasted {
        action_id: FOLLOWED.into(),
        status: "Pending".into(),
        since: "2026-12-07T20:00:00Z".into(),
    });
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(
        (info.reason.as_str(), info.metadata["last_status"].as_str()),
        ("UPSTREAM_OUTAGE", "Pending")
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_no_outage_and_fails_the_stream_as_before() {
    let upstream = outages(Duration::from_secs(600), 403);
    let mut follower = upstream
        .scans
        .follow(pending_action(), &CallContext::default());
    next_event(&mut follower).await.unwrap().unwrap();
    upstream.down.store(true, Ordering::SeqCst);
    let next = next_event(&mut follower).await;
    assert!(
        matches!(
            next,
            Some(Err(Error::WatchFailed {
                not_found: false,
                ..
            }))
        ),
        "{next:?}"
    );
}
