//! Redis coming back: after a 10 s outage early in a window, the replicas rejoin the shared
//! quota and use it rather than idling until the window has passed (issue 14, item 5), and no
//! window ever holds more calls than the limit. The windows are Defender's minute.
//!
//! What the outage costs: each replica waits out its quarantine (about 2.5 s) and then finds its
//! share spent, because while it was still counted alive the other could have taken all the
//! slack of the window (shared mode holds nothing back for a live replica) and neither can tell
//! a cut of its own from a cut of Redis. So nothing is admitted during the outage, and a replica
//! rejoins within a second of Redis answering (the heartbeat probes). Holding back part of each
//! live replica's share would let a fallback spend it, but would cost a busy replica that share
//! of the quota whenever the others are idle, in every window, outage or not; the gateway does
//! not make that trade (README, "Quota").
//!
//! Measured here: 108 of 120 (90 %). The demand is exactly the quota's pace, so every second
//! idle is lost: the ~23 s idle plus the ~9 s late rejoin the issue reported would leave about
//! 88 (73 %), under the line this test holds (80 %).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use scan_gateway::quota::{Limits, SharedConfig, SharedMetrics, SharedStore};
use tokio::time::Instant;

use super::{Proxy, RedisServer, busiest_window, limits, settle};
use crate::helpers::secret;
use scan_gateway::{quota::Admission, upstream::Api};

/// 60 calls a minute; Redis cut for 10 s one second into the measurement.
const CALLS: u32 = 60;
const WINDOW: Duration = Duration::from_secs(60);
const OUTAGE: Duration = Duration::from_secs(10);

fn replica(url: &str) -> Arc<SharedStore> {
    Arc::new(
        SharedStore::new(
            SharedConfig {
                url: secret(url),
                replicas: 2,
                prefix: "test-return".into(),
                timeout: Duration::from_millis(200),
            },
            Limits::uniform(limits(&[(CALLS, WINDOW.as_millis() as u64)])),
            SharedMetrics::default(),
        )
        .unwrap(),
    )
}

/// A caller that asks `store` once every `every` until `until` (a refused call is not asked
/// again: the next one comes at its time), noting when each call was admitted.
async fn ask_steadily(
    store: Arc<SharedStore>,
    every: Duration,
    until: Instant,
    log: Arc<Mutex<Vec<Instant>>>,
) -> usize {
    let mut admitted = 0;
    let mut next = Instant::now();
    while next < until {
        tokio::time::sleep_until(next).await;
        let asked = Instant::now();
        if let Admission::Admitted = store.try_admit(Api::GetAction, asked).await {
            let answered = Instant::now();
            log.lock().unwrap().push(asked + (answered - asked) / 2);
            admitted += 1;
        }
        next += every;
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_short_redis_outage_the_replicas_use_most_of_the_next_two_windows() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let (a, b) = (replica(&proxy.url()), replica(&proxy.url()));
    settle(&[&a, &b]).await;

    let log = Arc::new(Mutex::new(Vec::new()));
    let began = Instant::now();
    let until = began + 2 * WINDOW;
    let asking = tokio::spawn({
        let (a, b, log) = (a.clone(), b.clone(), log.clone());
        async move {
            // Together one call a second, the quota's pace: no burst spends a window before
            // the outage, and every second the replicas idle is a call lost for good (a
            // higher demand would make up for the idle time later in the window).
            tokio::join!(
                ask_steadily(a, Duration::from_millis(2000), until, log.clone()),
                ask_steadily(b, Duration::from_millis(2000), until, log.clone())
            )
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set_cut(true);
    tokio::time::sleep(OUTAGE).await;
    proxy.set_cut(false);
    let (by_a, by_b) = asking.await.unwrap();

    let admissions = log.lock().unwrap().clone();
    let busiest = busiest_window(&admissions, WINDOW, Duration::from_millis(50));
    let used = by_a + by_b;
    eprintln!(
        "admitted over two windows: A {by_a}, B {by_b} ({used} of {}); busiest window {busiest}",
        2 * CALLS
    );
    assert!(busiest <= CALLS as usize, "{busiest} calls in one window");
    assert!(
        used * 5 >= 4 * 2 * CALLS as usize,
        "{used} of {} calls used over two windows",
        2 * CALLS
    );
}
