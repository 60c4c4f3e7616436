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
