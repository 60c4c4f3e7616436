//! Reads that spend the quota only where they must, on the paused clock over a fake Defender
//! that counts its GETs and lists and answers each after a delay (so concurrent reads meet).

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use tower::{service_fn, util::BoxCloneSyncService};

use super::*;
use crate::{
    domain::ListQuery,
    upstream::{Request, Response},
    watcher::{WatchMetrics, WatcherConfig},
};

const ID: &str = "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37";
const MACHINE: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
const FRESHNESS: Duration = Duration::from_secs(10);
const ANSWER_DELAY: Duration = Duration::from_millis(100);

struct Fake {
    scans: Scans,
    gets: Arc<AtomicUsize>,
    lists: Arc<AtomicUsize>,
    /// The status Defender reports.
    status: Arc<Mutex<&'static str>>,
    /// The watcher runs while this lives.
    _running: tokio::sync::watch::Sender<bool>,
}

fn action_json(status: &str) -> serde_json::Value {
    serde_json::json!({
        "id": ID, "type": "RunAntiVirusScan", "scope": "Quick", "status": status,
        "machineId": MACHINE, "creationDateTimeUtc": "2026-11-26T09:14:05.3318207Z",
        "lastUpdateDateTimeUtc": "2026-11-26T09:14:06.3318207Z"
    })
}

fn fake(status: &'static str) -> Fake {
    let gets = Arc::new(AtomicUsize::new(0));
    let lists = Arc::new(AtomicUsize::new(0));
    let status = Arc::new(Mutex::new(status));
    let (g, l, s) = (gets.clone(), lists.clone(), status.clone());
    let service = service_fn(move |request: Request| {
        let (g, l, s) = (g.clone(), l.clone(), s.clone());
        async move {
            tokio::time::sleep(ANSWER_DELAY).await;
            let now = *s.lock().unwrap();
            let body = if request.uri().path().ends_with(ID) {
                g.fetch_add(1, Ordering::SeqCst);
                action_json(now)
            } else {
                l.fetch_add(1, Ordering::SeqCst);
                serde_json::json!({ "value": [action_json(now)] })
            };
            Ok::<Response, upstream::Error>(http::Response::new(Bytes::from(body.to_string())))
        }
    });
    let client = DefenderClient::new(
        url::Url::parse("https://api.security.microsoft.com").unwrap(),
        BoxCloneSyncService::new(service),
        Clock::system(),
    );
    let (running, shutdown) = tokio::sync::watch::channel(false);
    let watcher = Watcher::start(
        client.clone(),
        Clock::system(),
        WatcherConfig {
            interval: Duration::from_secs(2),
            list_call_spacing: Duration::ZERO,
            max_failures: 3,
        },
        WatchMetrics::default(),
        shutdown,
    );
    let scans = Scans::new(
        client,
        Clock::system(),
        ScansConfig {
            max_watch: Duration::from_secs(3600),
            follow_running: true,
            ride_out: Duration::from_secs(600),
            read_freshness: FRESHNESS,
        },
        ScanMetrics::default(),
        watcher,
        crate::idempotency::LocalKeys::default(),
        None,
    );
    Fake {
        scans,
        gets,
        lists,
        status,
        _running: running,
    }
}

fn id() -> ActionId {
    ActionId::parse("action_id", ID).unwrap()
}

/// `n` concurrent reads; each must succeed.
async fn read_concurrently(scans: &Scans, n: usize, fresh: bool) -> Vec<MachineAction> {
    // Spawned all before any is awaited: they meet in flight.
    let reads: Vec<_> = (0..n)
        .map(|_| {
            let scans = scans.clone();
            tokio::spawn(async move {
                scans
                    .read(&id(), &CallContext::default(), fresh)
                    .await
                    .map(|(action, _)| action)
            })
        })
        .collect();
    let mut actions = Vec::with_capacity(n);
    for read in reads {
        actions.push(read.await.unwrap().unwrap());
    }
    actions
}

#[tokio::test(start_paused = true)]
async fn two_hundred_reads_of_a_followed_action_make_no_call() {
    let fake = fake("InProgress");
    // A stream follows the action (as RunScan's first read left it).
    let (action, _) = fake
        .scans
        .read(&id(), &CallContext::default(), true)
        .await
        .unwrap();
    let _stream = fake.scans.0.watcher.subscribe(id(), &action);
    let before = fake.gets.load(Ordering::SeqCst);

    let actions = read_concurrently(&fake.scans, 200, false).await;
    assert_eq!(actions.len(), 200);
    assert_eq!(
        fake.gets.load(Ordering::SeqCst),
        before,
        "no GET for the reads"
    );
}

#[tokio::test(start_paused = true)]
async fn two_hundred_reads_of_an_unfollowed_action_make_one_call() {
    let fake = fake("InProgress");
    let actions = read_concurrently(&fake.scans, 200, false).await;
    assert!(actions.iter().all(|a| a.id == ID));
    assert_eq!(fake.gets.load(Ordering::SeqCst), 1, "one GET shared by all");
    assert_eq!(fake.lists.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn an_action_read_again_and_again_is_refreshed_by_the_watcher_not_a_get_each() {
    let fake = fake("InProgress");
    let mut observed = Vec::new();
    // A read every 5 s for a minute: six times the freshness bound.
    for _ in 0..12 {
        let asked = fake.scans.utc_at(tokio::time::Instant::now());
        let (action, at) = fake
            .scans
            .read(&id(), &CallContext::default(), false)
            .await
            .unwrap();
        assert_eq!(action.status, ActionStatus::InProgress);
        assert!(asked - at <= FRESHNESS, "confirmed within the bound");
        observed.push(at);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(fake.gets.load(Ordering::SeqCst), 1, "only the first read");
    assert!(fake.lists.load(Ordering::SeqCst) >= 10, "batched refreshes");
    for pair in observed.windows(2) {
        assert!(pair[1] >= pair[0], "never older than an earlier answer");
    }

    // The scan ends: the watcher sees it, and the final state is served from then on.
    *fake.status.lock().unwrap() = "Succeeded";
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (action, _) = fake
        .scans
        .read(&id(), &CallContext::default(), false)
        .await
        .unwrap();
    assert_eq!(action.status, ActionStatus::Succeeded);
    assert_eq!(fake.gets.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_one_off_read_costs_no_refreshes() {
    let fake = fake("InProgress");
    fake.scans
        .read(&id(), &CallContext::default(), false)
        .await
        .unwrap();
    tokio::time::sleep(READ_INTEREST).await;
    assert_eq!(fake.gets.load(Ordering::SeqCst), 1);
    assert_eq!(
        fake.lists.load(Ordering::SeqCst),
        0,
        "not followed for one read"
    );
}

#[tokio::test(start_paused = true)]
async fn a_final_action_is_read_from_defender_once() {
    let fake = fake("Succeeded");
    for _ in 0..5 {
        let (action, _) = fake
            .scans
            .read(&id(), &CallContext::default(), false)
            .await
            .unwrap();
        assert_eq!(action.status, ActionStatus::Succeeded);
        tokio::time::sleep(FRESHNESS * 10).await;
    }
    assert_eq!(fake.gets.load(Ordering::SeqCst), 1);
    assert_eq!(
        fake.lists.load(Ordering::SeqCst),
        0,
        "a final action is not followed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fresh_read_pays_a_call_each_time() {
    let fake = fake("Succeeded");
    for n in 1..=3 {
        fake.scans
            .read(&id(), &CallContext::default(), true)
            .await
            .unwrap();
        assert_eq!(fake.gets.load(Ordering::SeqCst), n);
    }
}

#[tokio::test(start_paused = true)]
async fn a_reader_whose_deadline_passes_leaves_the_call_to_the_others() {
    let fake = fake("InProgress");
    let hasty = CallContext {
        deadline: Some(tokio::time::Instant::now() + ANSWER_DELAY / 2),
        ..CallContext::default()
    };
    let (action_id, patient) = (id(), CallContext::default());
    // The patient reader's call first: the hasty one joins it and gives up alone.
    let (second, first) = tokio::join!(
        fake.scans.read(&action_id, &patient, false),
        fake.scans.read(&action_id, &hasty, false),
    );
    assert!(
        matches!(
            first,
            Err(Error::Upstream(upstream::Error::DeadlineExceeded { .. }))
        ),
        "{first:?}"
    );
    assert_eq!(second.unwrap().0.id, ID);
    assert_eq!(fake.gets.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_patient_reader_never_joins_a_call_that_may_give_up_sooner() {
    let fake = fake("InProgress");
    let hasty = CallContext {
        deadline: Some(tokio::time::Instant::now() + ANSWER_DELAY / 2),
        ..CallContext::default()
    };
    let (action_id, patient) = (id(), CallContext::default());
    // The hasty reader's call first: its deadline would bound the call (the quota refuses a
    // wait past it), so the patient reader makes a call of its own.
    let (first, second) = tokio::join!(
        fake.scans.read(&action_id, &hasty, false),
        fake.scans.read(&action_id, &patient, false),
    );
    assert!(first.is_err(), "{first:?}");
    assert_eq!(second.unwrap().0.id, ID);
    assert_eq!(fake.gets.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn identical_listings_in_flight_share_one_call() {
    let fake = fake("InProgress");
    let query = ListQuery {
        machine_id: None,
        status: None,
        created_after: None,
        top: 50,
        skip: 0,
    };
    let lists: Vec<_> = (0..50)
        .map(|_| {
            let (scans, query) = (fake.scans.clone(), query.clone());
            tokio::spawn(async move { scans.list(&query, &CallContext::default()).await })
        })
        .collect();
    for list in lists {
        assert_eq!(list.await.unwrap().unwrap().actions.len(), 1);
    }
    assert_eq!(fake.lists.load(Ordering::SeqCst), 1);
    // Another page is another query.
    let next = ListQuery { skip: 50, ..query };
    fake.scans
        .list(&next, &CallContext::default())
        .await
        .unwrap();
    assert_eq!(fake.lists.load(Ordering::SeqCst), 2);
}
