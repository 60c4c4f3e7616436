//! The watcher over a fake Defender: a panic in one refresh costs that refresh only.

use super::*;
use crate::{
    domain::ActionStatus,
    upstream::{Request, Response},
};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::{service_fn, util::BoxCloneSyncService};

const FIRST: &str = "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37";
const SECOND: &str = "0d9e8f71-2c3b-4a5d-8e6f-7a1b2c3d4e5f";

fn action(id: &str, status: ActionStatus) -> MachineAction {
    MachineAction {
        id: id.to_owned(),
        action_type: SCAN_ACTION_TYPE.to_owned(),
        scope: None,
        status,
        machine_id: "1e5bc9d7e413ddd7902c2932e418702b84d0cc07".to_owned(),
        computer_dns_name: None,
        requestor: None,
        requestor_comment: None,
        creation_time: None,
        last_update_time: None,
        cancellation_requestor: None,
        cancellation_comment: None,
        cancellation_time: None,
        title: None,
        external_id: None,
    }
}

fn succeeded(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "type": SCAN_ACTION_TYPE, "status": "Succeeded"})
}

/// A Defender whose first call panics inside the stack (as the `Retry-After` overflow once
/// did), and that lists both actions as succeeded afterwards; counts calls.
fn panicking_once() -> (DefenderClient, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let fake = service_fn(move |_request: Request| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                panic!("injected: a bug in the first refresh");
            }
            let body = serde_json::json!({"value": [succeeded(FIRST), succeeded(SECOND)]});
            Ok::<Response, upstream::Error>(http::Response::new(Bytes::from(body.to_string())))
        }
    });
    let client = DefenderClient::new(
        url::Url::parse("https://api.security.microsoft.com").unwrap(),
        BoxCloneSyncService::new(fake),
        Clock::system(),
    );
    (client, calls)
}

async fn until_succeeded(updates: &mut watch::Receiver<Update>) {
    let served = updates.wait_for(
        |update| matches!(update, Update::Action(a) if a.status == ActionStatus::Succeeded),
    );
    tokio::time::timeout(Duration::from_secs(60), served)
        .await
        .expect("the watcher serves its subscribers after the panic")
        .expect("the subscription outlives the panic");
}

#[tokio::test(start_paused = true)]
async fn the_watcher_keeps_serving_after_a_panic_in_one_refresh() {
    let (client, calls) = panicking_once();
    let mut registry = crate::metrics::registry();
    let metrics = WatchMetrics::register(&mut registry);
    let (_stop, shutdown) = watch::channel(false);
    let watcher = Watcher::start(
        client,
        Clock::system(),
        WatcherConfig {
            interval: Duration::from_millis(10),
            list_call_spacing: Duration::ZERO,
            max_failures: 3,
        },
        metrics,
        shutdown,
    );
    let id = |raw| ActionId::parse("id", raw).unwrap();

    // Followed before the panic: its subscription is kept across the restart.
    let mut first = watcher.subscribe(id(FIRST), &action(FIRST, ActionStatus::Pending));
    until_succeeded(&mut first).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the panicked call, then one"
    );

    // Followed after it: the restarted loop serves new actions too.
    let mut second = watcher.subscribe(id(SECOND), &action(SECOND, ActionStatus::Pending));
    until_succeeded(&mut second).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let exposition = crate::metrics::Metrics::new(registry).render_text();
    assert!(
        exposition.contains("scan_gateway_watch_panics_total 1\n"),
        "{exposition}"
    );
}
