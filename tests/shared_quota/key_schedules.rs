//! `request_id` under schedules that proptest draws: two gateways sharing Redis, callers that
//! start and retry the same keys on either gateway with random deadlines, scan POSTs answered
//! late or lost after taking effect, Redis paused or restarted empty.
//! Property: each key starts at most one scan, and every call answered OK for a key names the
//! same action.
//!
//! Each case runs in real time, about 10 s. Cases: `KEY_SCHEDULES` (default 2); a failing case
//! prints its schedule.
//!
//! Redis outages (paused through a cut proxy, or restarted empty) are drawn unless
//! `KEY_SCHEDULES_REDIS=0`: with several replicas a key no replica
//! knows is refused while Redis is unreachable, and after Redis lost its data the replicas
//! write their keys back before any new claim is let in.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use defender_simulator::{EndpointFaults, Faults};
use proptest::{prelude::*, test_runner::TestCaseError};
use scan_gateway::grpc::pb;

use super::{Proxy, RedisServer, real_time_cases, real_time_runtime};
use crate::helpers::*;

#[derive(Debug, Clone)]
struct Attempt {
    key: usize,
    /// From the start of the case.
    at: Duration,
    gateway: usize,
    deadline: Duration,
    /// How often the caller tries again (same key) after a failure.
    retries: usize,
}

#[derive(Debug, Clone)]
enum RedisEvent {
    Pause { at: Duration, for_: Duration },
    Restart { at: Duration },
}

#[derive(Debug, Clone)]
struct Schedule {
    keys: usize,
    attempts: Vec<Attempt>,
    redis: Vec<RedisEvent>,
    /// Scan POSTs: how late the answer leaves after the action exists.
    answer_latency: Duration,
    /// Share of scan POSTs that take effect but are answered 500.
    lost: f64,
}

fn schedule() -> impl Strategy<Value = Schedule> {
    let attempt = (0..3usize, 0..3000u64, 0..2usize, 200..2500u64, 0..3usize).prop_map(
        |(key, at, gateway, deadline, retries)| Attempt {
            key,
            at: Duration::from_millis(at),
            gateway,
            deadline: Duration::from_millis(deadline),
            retries,
        },
    );
    let event = prop_oneof![
        (0..3000u64, 300..2000u64).prop_map(|(at, ms)| RedisEvent::Pause {
            at: Duration::from_millis(at),
            for_: Duration::from_millis(ms),
        }),
        (0..3000u64).prop_map(|at| RedisEvent::Restart {
            at: Duration::from_millis(at)
        }),
    ];
    (
        1..=3usize,
        prop::collection::vec(attempt, 3..=8),
        prop::collection::vec(event, 0..=redis_events()),
        0..1500u64,
        prop_oneof![Just(0.0), Just(0.3)],
    )
        .prop_map(|(keys, attempts, redis, latency, lost)| Schedule {
            keys,
            attempts: attempts
                .into_iter()
                .map(|a| Attempt {
                    key: a.key % keys,
                    ..a
                })
                .collect(),
            redis,
            answer_latency: Duration::from_millis(latency),
            lost,
        })
}

/// At most this many Redis outages per case (none with `KEY_SCHEDULES_REDIS=0`).
fn redis_events() -> usize {
    if std::env::var("KEY_SCHEDULES_REDIS").is_ok_and(|v| v == "0") {
        0
    } else {
        2
    }
}

fn comment(key: usize) -> String {
    format!("key schedule {key}")
}

async fn run(schedule: Schedule) -> Result<(), TestCaseError> {
    let Some(redis) = RedisServer::start() else {
        return Ok(());
    };
    let redis = Arc::new(Mutex::new(redis));
    let port = redis.lock().unwrap().port;
    let proxy = Arc::new(Proxy::start(([127, 0, 0, 1], port).into()).await);
    let sim = Arc::new(spawn_simulator(fast_simulator()).await);
    sim.handle.set_faults(Faults {
        run_scan: EndpointFaults {
            answer_latency: schedule.answer_latency,
            lost_response_rate: schedule.lost,
            ..EndpointFaults::default()
        },
        ..Faults::default()
    });
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let mut args = settings_for(&sim);
        args.redis_url = Some(secret(&proxy.url()));
        args.replicas = Some(2);
        gateways.push(spawn_gateway_sharing(sim.clone(), args).await);
    }
    // Past the fresh epoch's gathering, so the quota does not refuse the first starts.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let run_id = format!("{:x}", rand_suffix());
    let begin = tokio::time::Instant::now();
    let answered: Arc<Mutex<HashMap<usize, HashSet<String>>>> = Arc::default();
    let mut tasks = Vec::new();
    for attempt in schedule.attempts.clone() {
        let mut client = gateways[attempt.gateway].client.clone();
        let machine = sim.machine(attempt.key);
        let request_id = format!("{run_id}-{}", attempt.key);
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(begin + attempt.at).await;
            for _ in 0..=attempt.retries {
                let mut request = tonic::Request::new(pb::StartScanRequest {
                    machine_id: machine.clone(),
                    scan_type: pb::ScanType::Quick as i32,
                    comment: comment(attempt.key),
                    request_id: request_id.clone(),
                    priority: 0,
                });
                request.set_timeout(attempt.deadline);
                match client.start_scan(request).await {
                    Ok(response) => {
                        if let Some(action) = response.into_inner().action {
                            answered
                                .lock()
                                .unwrap()
                                .entry(attempt.key)
                                .or_default()
                                .insert(action.id);
                        }
                        return;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            }
        }));
    }
    for event in schedule.redis.clone() {
        let (redis, proxy) = (redis.clone(), proxy.clone());
        tasks.push(tokio::spawn(async move {
            match event {
                RedisEvent::Pause { at, for_ } => {
                    tokio::time::sleep_until(begin + at).await;
                    proxy.set_cut(true);
                    tokio::time::sleep(for_).await;
                    proxy.set_cut(false);
                }
                RedisEvent::Restart { at } => {
                    tokio::time::sleep_until(begin + at).await;
                    tokio::task::spawn_blocking(move || redis.lock().unwrap().restart())
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    proxy.set_cut(false);
    // Starts whose callers left finish (or are resolved) in the background.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut client = gateways[0].client.clone();
    let mut started = HashMap::new();
    for key in 0..schedule.keys {
        // Right after a Redis restart the quota may still hold its windows (a fresh epoch
        // waits for every replica to write its calls back): ask again, as RetryInfo says.
        let mut tries = 0;
        let listed = loop {
            let asked = client
                .list_scans(pb::ListScansRequest {
                    machine_id: sim.machine(key),
                    page_size: 100,
                    ..Default::default()
                })
                .await;
            match asked {
                Ok(listed) => break listed.into_inner(),
                Err(status) if status.code() == tonic::Code::ResourceExhausted && tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(status) => {
                    return Err(TestCaseError::fail(format!("listing: {status:?}")));
                }
            }
        };
        let ids: Vec<String> = listed
            .actions
            .into_iter()
            .filter(|a| a.requestor_comment == comment(key))
            .map(|a| a.id)
            .collect();
        started.insert(key, ids);
    }
    for gateway in gateways {
        let _ = gateway.shutdown().await;
    }
    let answered = answered.lock().unwrap().clone();
    eprintln!("{schedule:?}: started {started:?}, answered {answered:?}");
    for (key, ids) in &started {
        prop_assert!(
            ids.len() <= 1,
            "key {} started {} scans: {:?}",
            key,
            ids.len(),
            ids
        );
    }
    for (key, ids) in &answered {
        prop_assert!(
            ids.len() <= 1,
            "key {} answered with several actions: {:?}",
            key,
            ids
        );
        let created = &started[key];
        prop_assert!(
            ids.iter().all(|id| created.contains(id)),
            "key {} answered {:?}, but its scan is {:?}",
            key,
            ids,
            created
        );
    }
    Ok(())
}

/// Keys differ between cases (the gateways keep them for 24 h, Redis is new each case anyway).
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

proptest! {
    #![proptest_config(real_time_cases("KEY_SCHEDULES", 2))]

    #[test]
    fn no_schedule_starts_two_scans_for_one_key(schedule in schedule()) {
        real_time_runtime().block_on(run(schedule))?;
    }
}
