//! Epochs and membership: what the shared quota admits after Redis loses its data, and how
//! much of it a replica gets when fewer replicas run than the configured count.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use scan_gateway::{
    quota::{Admission, Limits, SharedConfig, SharedMetrics, SharedStore, shared},
    upstream::Api,
};

use super::Proxy;
use tokio::time::Instant;

use super::{RedisServer, busiest_window, keep_asking, limits, settle};
use crate::helpers::secret;

fn store(
    redis: &RedisServer,
    prefix: &str,
    replicas: u32,
    pairs: &[(u32, u64)],
) -> Arc<SharedStore> {
    Arc::new(
        SharedStore::new(
            SharedConfig {
                url: secret(&redis.url()),
                replicas,
                prefix: prefix.into(),
                timeout: Duration::from_millis(300),
            },
            Limits::uniform(limits(pairs)),
            SharedMetrics::default(),
        )
        .unwrap(),
    )
}

/// Admits `n` calls through `store`, as fast as it allows.
async fn admit(store: &SharedStore, n: usize) {
    let mut admitted = 0;
    let until = Instant::now() + Duration::from_secs(5);
    while admitted < n {
        assert!(Instant::now() < until, "only {admitted} of {n} admitted");
        match store.try_admit(Api::GetAction, Instant::now()).await {
            Admission::Admitted => admitted += 1,
            Admission::NotBefore(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A and B share 20 calls per 10 s; A has made 1, B 19, when Redis loses its data.
async fn a_full_window_then_lost(
    redis: &RedisServer,
    prefix: &str,
) -> (Arc<SharedStore>, Arc<SharedStore>, Instant) {
    let (a, b) = (
        store(redis, prefix, 2, &[(20, 10_000)]),
        store(redis, prefix, 2, &[(20, 10_000)]),
    );
    settle(&[&a, &b]).await;
    admit(&a, 1).await;
    admit(&b, 19).await;
    (a, b, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_data_nothing_is_admitted_that_the_lost_calls_may_fill() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b, full) = a_full_window_then_lost(&redis, "test-flush-both").await;
    // A heartbeat later, both have seen the window; then Redis restarts empty.
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.flush_all();
    // B stays idle; A asks. Until the window that holds the 20 calls has passed, none fits:
    // B, though idle, writes its 19 back (its heartbeat finds the epoch gone), and A waits for
    // it, having seen B alive; A writes back its 1 and its mirror of B's.
    let log = Arc::new(Mutex::new(Vec::new()));
    let by_a = keep_asking(a.clone(), full + Duration::from_secs(8), log).await;
    assert_eq!(
        by_a, 0,
        "A admitted {by_a} calls into a window already full"
    );
    assert!(!a.in_fallback() && !b.in_fallback());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_of_a_replica_gone_before_redis_lost_its_data_still_count() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b, full) = a_full_window_then_lost(&redis, "test-flush-gone").await;
    // B stops without a word and stays away; A's heartbeats see it gone. Only A's mirror of
    // the shared log now knows B's 19 calls when Redis restarts empty.
    drop(b);
    tokio::time::sleep(shared::ALIVE_TTL + Duration::from_millis(1000)).await;
    redis.flush_all();
    let log = Arc::new(Mutex::new(Vec::new()));
    let by_a = keep_asking(a.clone(), full + Duration::from_secs(8), log.clone()).await;
    assert_eq!(
        by_a, 0,
        "A admitted {by_a} calls into a window B had filled"
    );
    // Once the window has passed, A admits again: within its share, for B may still be
    // deciding alone.
    let by_a = keep_asking(a.clone(), full + Duration::from_millis(11_500), log).await;
    assert!((1..=10).contains(&by_a), "{by_a} admitted after the window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_replicas_than_configured_use_the_whole_quota() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Configured for 6 (an HPA's maximum), but only one runs, then two: the replicas that
    // never joined have made no call, so nothing is held back for them.
    let quota = [(12, 1000), (500, 60_000)];
    let a = store(&redis, "test-members", 6, &quota);
    settle(&[&a]).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    keep_asking(
        a.clone(),
        Instant::now() + Duration::from_millis(2500),
        log.clone(),
    )
    .await;
    let alone = busiest_window(
        &log.lock().unwrap(),
        Duration::from_secs(1),
        Duration::from_millis(50),
    );
    log.lock().unwrap().clear();
    let b = store(&redis, "test-members", 6, &quota);
    admit(&b, 1).await;
    let until = Instant::now() + Duration::from_millis(2500);
    tokio::join!(
        keep_asking(a.clone(), until, log.clone()),
        keep_asking(b.clone(), until, log.clone())
    );
    let two = busiest_window(
        &log.lock().unwrap(),
        Duration::from_secs(1),
        Duration::from_millis(50),
    );
    eprintln!("busiest second of 12: one replica of six {alone}, two of six {two}");
    assert!((11..=12).contains(&alone), "one replica of six: {alone}");
    assert!((11..=12).contains(&two), "two replicas of six: {two}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_in_fallback_comes_back_so_a_flushed_redis_does_not_hold_the_windows() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // An hourly window: a pending replica that never came back would hold it for an hour.
    let quota = [(20, 10_000), (1000, 3_600_000)];
    let a = store(&redis, "test-idle-return", 2, &quota);
    // B reaches Redis through a proxy the test cuts.
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let b = Arc::new(
        SharedStore::new(
            SharedConfig {
                url: secret(&proxy.url()),
                replicas: 2,
                prefix: "test-idle-return".into(),
                timeout: Duration::from_millis(300),
            },
            Limits::uniform(limits(&quota)),
            SharedMetrics::default(),
        )
        .unwrap(),
    );
    settle(&[&a, &b]).await;
    admit(&a, 1).await;
    admit(&b, 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // B loses Redis during a call and falls back, then stays idle. Before its alive key has
    // lapsed, Redis loses its data: A starts a fresh epoch naming B pending.
    proxy.set_cut(true);
    let _ = b.try_admit(Api::GetAction, Instant::now()).await;
    assert!(b.in_fallback());
    redis.flush_all();
    let _ = a.try_admit(Api::GetAction, Instant::now()).await;
    proxy.set_cut(false);
    // B must come back on its own (no call of its own will bring it), or A's windows stay
    // held for B's calls until the hour has passed.
    let log = Arc::new(Mutex::new(Vec::new()));
    let by_a = keep_asking(a.clone(), Instant::now() + Duration::from_secs(8), log).await;
    eprintln!("admitted by A within 8 s of the flush: {by_a}");
    assert!(by_a > 0, "A's windows stayed held for the idle replica B");
    assert!(
        !b.in_fallback(),
        "the idle replica came back to the shared quota"
    );
}
