//! The quota on the paused clock: limits over every sliding window, earliest admissions under
//! saturation (property-tested), deadlines, queue bounds, cancellation, pauses.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

fn limits(pairs: &[(u32, u64)]) -> Vec<Limit> {
    pairs
        .iter()
        .map(|&(calls, millis)| Limit {
            calls,
            window: Duration::from_millis(millis),
        })
        .collect()
}

fn quota_with(limits: Limits, max_queue: usize) -> Arc<Quota> {
    let config = QuotaConfig {
        limits,
        max_wait: Duration::from_secs(100_000),
        max_queue,
        margin: Duration::ZERO,
        background_floor: DEFAULT_BACKGROUND_FLOOR,
    };
    Arc::new(Quota::local(
        &config,
        Clock::system(),
        QuotaMetrics::default(),
    ))
}

fn quota(pairs: &[(u32, u64)]) -> Arc<Quota> {
    quota_with(Limits::uniform(limits(pairs)), 100_000)
}

const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;

#[tokio::test(start_paused = true)]
async fn admits_the_limit_at_once_then_waits_for_the_window_to_slide() {
    let quota = quota(&[(100, MIN), (1500, HOUR)]);
    let start = Instant::now();
    for _ in 0..100 {
        quota
            .acquire(Api::GetAction, None, None, None)
            .await
            .unwrap();
    }
    assert_eq!(Instant::now(), start);
    quota
        .acquire(Api::GetAction, None, None, None)
        .await
        .unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(60));
    // Another API has its own quota.
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn the_hourly_limit_holds_under_saturation() {
    let quota = quota(&[(100, MIN), (1500, HOUR)]);
    let start = Instant::now();
    for _ in 0..1500 {
        quota
            .acquire(Api::ListActions, None, None, None)
            .await
            .unwrap();
    }
    // 15 bursts of 100, a minute apart: the 1,500th call is admitted at minute 14.
    assert_eq!(Instant::now() - start, Duration::from_secs(14 * 60));
    quota
        .acquire(Api::ListActions, None, None, None)
        .await
        .unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(3600));
}

#[tokio::test(start_paused = true)]
async fn an_overall_cap_applies_across_apis() {
    let mut limits = Limits::uniform(self::limits(&[(100, MIN)]));
    limits.total = Some(self::limits(&[(3, MIN)]));
    let quota = quota_with(limits, 100);
    let start = Instant::now();
    quota
        .acquire(Api::GetAction, None, None, None)
        .await
        .unwrap();
    quota
        .acquire(Api::ListActions, None, None, None)
        .await
        .unwrap();
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    quota
        .acquire(Api::CancelAction, None, None, None)
        .await
        .unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn refuses_at_once_when_the_deadline_cannot_be_met() {
    let quota = quota(&[(2, MIN)]);
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    let start = Instant::now();
    let err = quota
        .acquire(
            Api::RunScan,
            None,
            Some(start + Duration::from_secs(10)),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(Instant::now(), start, "refused without waiting");
    let Error::QuotaExhausted { retry_after, .. } = err;
    assert_eq!(retry_after, Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let quota = quota_with(Limits::uniform(limits(&[(1, MIN)])), 2);
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let quota = quota.clone();
            tokio::spawn(async move { quota.acquire(Api::RunScan, None, None, None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let start = Instant::now();
    let err = quota
        .acquire(Api::RunScan, None, None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::QuotaExhausted { .. }));
    assert_eq!(Instant::now(), start);
    for waiter in waiters {
        waiter.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_callers_are_told_their_position_and_start() {
    let quota = quota(&[(1, MIN)]);
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let observer = QueueObserver(Arc::new(move |position, at| {
        log.lock().unwrap().push((position, at));
    }));
    let start = Instant::now();
    quota
        .acquire(Api::RunScan, None, None, Some(&observer))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [(1, start + Duration::from_secs(60))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_frees_its_place() {
    let quota = quota(&[(1, MIN)]);
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    let waiter = {
        let quota = quota.clone();
        tokio::spawn(async move { quota.acquire(Api::RunScan, None, None, None).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        quota.queues[&Api::RunScan].waiting.load(Ordering::SeqCst),
        1
    );
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(
        quota.queues[&Api::RunScan].waiting.load(Ordering::SeqCst),
        0
    );
    // The next caller is not held behind the cancelled one.
    let start = Instant::now();
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(59));
}

#[tokio::test(start_paused = true)]
async fn an_upstream_pause_delays_admissions() {
    let quota = quota(&[(100, MIN)]);
    let start = Instant::now();
    quota
        .pause(Api::GetAction, start + Duration::from_secs(37))
        .await;
    quota
        .acquire(Api::GetAction, None, None, None)
        .await
        .unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(37));
}

/// The reference: each call, in arrival order, starts at the earliest instant that respects
/// its arrival, the previous call's start (FIFO), and every limit.
fn earliest_admissions(pairs: &[(u32, u64)], arrivals: &[u64]) -> Vec<u64> {
    let mut admitted: Vec<u64> = Vec::new();
    for &arrival in arrivals {
        let mut at = arrival.max(admitted.last().copied().unwrap_or(0));
        for &(calls, window) in pairs {
            let calls = calls as usize;
            if admitted.len() >= calls {
                at = at.max(admitted[admitted.len() - calls] + window);
            }
        }
        admitted.push(at);
    }
    admitted
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random arrivals against several (calls, window) pairs: no window is ever exceeded, and
    /// every admission happens at the earliest moment allowed.
    #[test]
    fn no_window_is_exceeded_and_every_admission_is_as_early_as_allowed(
        pairs in prop::collection::vec((1u32..6, 1u64..50), 1..4)
            .prop_map(|p| p.into_iter().map(|(c, w)| (c, w * 100)).collect::<Vec<_>>()),
        gaps in prop::collection::vec(1u64..400, 1..60),
    ) {
        let arrivals: Vec<u64> = gaps
            .iter()
            .scan(0u64, |t, gap| { *t += gap; Some(*t) })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let admitted = runtime.block_on(async {
            let quota = quota(&pairs);
            let start = Instant::now();
            let tasks: Vec<_> = arrivals
                .iter()
                .map(|&arrival| {
                    let quota = quota.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(start + Duration::from_millis(arrival)).await;
                        quota.acquire(Api::GetAction, None, None, None).await.unwrap();
                        (Instant::now() - start).as_millis() as u64
                    })
                })
                .collect();
            let mut admitted = Vec::new();
            for task in tasks {
                admitted.push(task.await.unwrap());
            }
            admitted
        });
        for &(calls, window) in &pairs {
            for (i, &t) in admitted.iter().enumerate() {
                let in_window = admitted[i..].iter().filter(|&&u| u >= t && u < t + window).count();
                prop_assert!(in_window <= calls as usize, "{in_window} calls in {window} ms from {t}");
            }
        }
        prop_assert_eq!(admitted, earliest_admissions(&pairs, &arrivals));
    }
}

fn caller(id: &str, share: Option<f64>) -> QuotaCaller {
    QuotaCaller {
        id: Arc::from(id),
        share,
        priority: Priority::Normal,
    }
}

/// Starts `n` waiting calls of `who`, in order, and returns their admission times as they come.
fn spawn_calls(
    quota: &Arc<Quota>,
    who: &QuotaCaller,
    n: usize,
    log: &Arc<Mutex<Vec<(String, Instant)>>>,
) -> Vec<tokio::task::JoinHandle<Result<(), Error>>> {
    (0..n)
        .map(|_| {
            let (quota, who, log) = (quota.clone(), who.clone(), log.clone());
            tokio::spawn(async move {
                quota.acquire(Api::RunScan, Some(&who), None, None).await?;
                log.lock()
                    .unwrap()
                    .push((who.id.to_string(), Instant::now()));
                Ok(())
            })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn callers_take_turns_however_many_calls_one_of_them_queued() {
    let quota = quota(&[(1, 1000)]);
    let log = Arc::new(Mutex::new(Vec::new()));
    let noisy = caller("noisy", None);
    let quiet = caller("quiet", None);
    // The noisy caller queues 20 calls first, then the quiet one queues 3.
    let mut calls = spawn_calls(&quota, &noisy, 20, &log);
    tokio::time::sleep(Duration::from_millis(1)).await;
    calls.extend(spawn_calls(&quota, &quiet, 3, &log));
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let order: Vec<String> = log.lock().unwrap().iter().map(|(w, _)| w.clone()).collect();
    let quiet_at: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, w)| *w == "quiet")
        .map(|(i, _)| i)
        .collect();
    // In arrival order the quiet caller would be served 21st to 23rd; taking turns, it is
    // served within the first few admissions.
    assert!(quiet_at.iter().all(|&i| i <= 7), "{order:?}");
    assert_eq!(order.len(), 23);
    assert_eq!(quota.lanes(), 0, "empty lanes are dropped");
}

#[tokio::test(start_paused = true)]
async fn a_caller_with_a_share_gets_no_more_than_its_share_and_the_rest_stays_free() {
    // 10 calls per second; the noisy caller may use 30 % of it.
    let quota = quota(&[(10, 1000)]);
    let log = Arc::new(Mutex::new(Vec::new()));
    let noisy = caller("noisy", Some(0.3));
    let start = Instant::now();
    let calls = spawn_calls(&quota, &noisy, 9, &log);
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The quiet caller is admitted at once: the noisy one left 7 calls of the window free.
    for _ in 0..7 {
        quota
            .acquire(Api::RunScan, Some(&caller("quiet", None)), None, None)
            .await
            .unwrap();
    }
    assert_eq!(Instant::now() - start, Duration::from_millis(10));
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // 3 per second for the noisy caller: 9 calls take three windows.
    let times: Vec<Duration> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, at)| *at - start)
        .collect();
    for (i, at) in times.iter().enumerate() {
        assert!(
            *at >= Duration::from_millis(1000 * (i as u64 / 3)),
            "call {i} at {at:?}: {times:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_with_a_share_fills_only_its_share_of_the_queue() {
    let quota = quota_with(Limits::uniform(limits(&[(1, MIN)])), 10);
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    let noisy = caller("noisy", Some(0.2));
    let log = Arc::new(Mutex::new(Vec::new()));
    let waiting = spawn_calls(&quota, &noisy, 2, &log);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let err = quota
        .acquire(Api::RunScan, Some(&noisy), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::QuotaExhausted { .. }));
    // Another caller still finds room.
    let other = {
        let quota = quota.clone();
        tokio::spawn(async move {
            quota
                .acquire(Api::RunScan, Some(&caller("other", None)), None, None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!other.is_finished());
    for call in waiting {
        call.abort();
    }
    other.abort();
}

// The shared store without Redis; its liveness rules are tested in shared/fallback.rs, the
// scripts against a real redis-server in tests/shared_quota.

/// A store of `replicas` sharing 4 calls a minute through a Redis that refuses every connection.
fn cut_off_store(replicas: u32) -> SharedStore {
    // A loopback port nobody listens on: every connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    SharedStore::new(
        SharedConfig {
            url: format!("redis://127.0.0.1:{port}/0").into(),
            replicas,
            prefix: "unit".into(),
            timeout: Duration::from_millis(200),
        },
        Limits::uniform(limits(&[(4, 60_000)])),
        SharedMetrics::default(),
    )
    .expect("a valid URL")
}

#[tokio::test]
async fn a_replica_that_never_reached_redis_admits_nothing_alone_before_its_window_has_passed() {
    // The others never knew of it, so they kept no share for it and may have used the whole
    // quota: nothing is provably free until a window has passed.
    let store = cut_off_store(2);
    let now = Instant::now();
    let Admission::NotBefore(at) = store.try_admit(Api::GetAction, now).await else {
        panic!("a replica unknown to the others admitted alone");
    };
    assert!(store.in_fallback());
    assert!(at >= now + Duration::from_secs(60), "{:?}", at - now);
    // Alone by configuration, there are no others: its whole share at once.
    let alone = cut_off_store(1);
    for _ in 0..4 {
        assert_eq!(
            alone.try_admit(Api::GetAction, now).await,
            Admission::Admitted
        );
    }
    assert!(matches!(
        alone.try_admit(Api::GetAction, now).await,
        Admission::NotBefore(_)
    ));
}

#[test]
fn shares_never_sum_above_a_limit_and_a_share_of_nothing_admits_nothing() {
    let whole = Limits::uniform(limits(&[(2, 5_000), (100, 60_000)]));
    let share = whole.share(3);
    assert_eq!(
        share.per_api[&Api::RunScan]
            .iter()
            .map(|l| l.calls)
            .collect::<Vec<_>>(),
        [0, 33]
    );
    let store = LocalStore::new(&share);
    let now = Instant::now();
    assert!(matches!(
        store.try_admit(Api::RunScan, now),
        Admission::NotBefore(at) if at >= now + Duration::from_secs(5)
    ));
}
