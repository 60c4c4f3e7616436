//! Priority classes on the paused clock: urgent before normal before background, background's
//! floor, the estimate a queued call is told, and callers taking turns within a class.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::*;

/// One call a second: every admission after the first waits for a slot.
fn quota(floor: f64) -> Arc<Quota> {
    let config = QuotaConfig {
        limits: Limits::uniform(vec![Limit {
            calls: 1,
            window: Duration::from_secs(1),
        }]),
        max_wait: Duration::from_secs(100_000),
        max_queue: 100_000,
        margin: Duration::ZERO,
        background_floor: floor,
    };
    Arc::new(Quota::local(
        &config,
        Clock::system(),
        QuotaMetrics::default(),
    ))
}

fn caller(id: &str, priority: Priority) -> QuotaCaller {
    QuotaCaller {
        id: Arc::from(id),
        share: None,
        priority,
    }
}

type Log = Arc<Mutex<Vec<(String, Instant)>>>;

/// One call of `who`; its admission time is logged under its id.
fn call(quota: &Arc<Quota>, who: QuotaCaller, log: &Log) -> tokio::task::JoinHandle<()> {
    let (quota, log) = (quota.clone(), log.clone());
    tokio::spawn(async move {
        quota
            .acquire(Api::RunScan, Some(&who), None, None)
            .await
            .expect("admitted");
        log.lock()
            .unwrap()
            .push((who.id.to_string(), Instant::now()));
    })
}

fn order(log: &Log) -> Vec<String> {
    log.lock().unwrap().iter().map(|(w, _)| w.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn an_urgent_call_behind_ten_background_ones_takes_the_next_free_slot() {
    let quota = quota(DEFAULT_BACKGROUND_FLOOR);
    let log = Log::default();
    let start = Instant::now();
    // The window's one call is spent: everyone after waits.
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    let mut calls: Vec<_> = (0..10)
        .map(|n| {
            call(
                &quota,
                caller(&format!("sweep-{n}"), Priority::Background),
                &log,
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    calls.push(call(&quota, caller("incident", Priority::Urgent), &log));
    for call in calls {
        call.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let (first, at) = &log[0];
    assert_eq!(first, "incident", "{log:?}");
    assert_eq!(*at, start + Duration::from_secs(1), "the next free slot");
    assert_eq!(log.len(), 11, "every background call got in after it");
}

#[tokio::test(start_paused = true)]
async fn background_progresses_at_its_floor_under_a_steady_urgent_load() {
    let quota = quota(0.2);
    let log = Log::default();
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    // More urgent calls than the window can ever serve in the test, from 5 callers, and three
    // background calls queued among them.
    let mut calls = Vec::new();
    for n in 0..40 {
        calls.push(call(
            &quota,
            caller(&format!("urgent-{}", n % 5), Priority::Urgent),
            &log,
        ));
        if n % 10 == 0 {
            calls.push(call(
                &quota,
                caller(&format!("sweep-{n}"), Priority::Background),
                &log,
            ));
        }
    }
    for call in calls {
        call.await.unwrap();
    }
    let order = order(&log);
    let background: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, w)| w.starts_with("sweep"))
        .map(|(i, _)| i)
        .collect();
    // A floor of 0.2: one admission in five while background waits.
    assert_eq!(background.len(), 4, "{order:?}");
    for (k, at) in background.iter().enumerate() {
        assert!(
            *at <= 5 * (k + 1),
            "background call {k} admitted as number {at}: {order:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn urgent_goes_before_normal_before_background_and_callers_take_turns_within_a_class() {
    let quota = quota(DEFAULT_BACKGROUND_FLOOR);
    let log = Log::default();
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    let mut calls = Vec::new();
    calls.push(call(&quota, caller("b", Priority::Background), &log));
    for _ in 0..2 {
        calls.push(call(&quota, caller("n1", Priority::Normal), &log));
    }
    calls.push(call(&quota, caller("n2", Priority::Normal), &log));
    tokio::time::sleep(Duration::from_millis(10)).await;
    calls.push(call(&quota, caller("u", Priority::Urgent), &log));
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(order(&log), ["u", "n1", "n2", "n1", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_is_told_the_classes_ahead_of_it() {
    let quota = quota(DEFAULT_BACKGROUND_FLOOR);
    let log = Log::default();
    let start = Instant::now();
    quota.acquire(Api::RunScan, None, None, None).await.unwrap();
    let mut calls: Vec<_> = (0..5)
        .map(|n| call(&quota, caller(&format!("u{n}"), Priority::Urgent), &log))
        .collect();
    calls
        .extend((0..5).map(|n| call(&quota, caller(&format!("b{n}"), Priority::Background), &log)));
    tokio::time::sleep(Duration::from_millis(10)).await;

    let told = Arc::new(Mutex::new(None));
    let observer = QueueObserver(Arc::new({
        let told = told.clone();
        move |position, at| *told.lock().unwrap() = Some((position, at))
    }));
    let normal = caller("n", Priority::Normal);
    quota
        .acquire(Api::RunScan, Some(&normal), None, Some(&observer))
        .await
        .unwrap();
    let (position, at) = told.lock().unwrap().expect("told its place");
    // Behind the five urgent calls only: the background ones come after it.
    assert_eq!(position, 6);
    assert_eq!(at, start + Duration::from_secs(6));
    for call in calls {
        call.await.unwrap();
    }
}
