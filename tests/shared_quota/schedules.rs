//! The quota under schedules that proptest draws: callers arriving at random with random
//! deadlines (and some dropping their call at a random moment), token fetches delayed up to
//! 3 s and tokens revoked, new connections to the API that take up to 1.5 s to open (and every
//! open connection dropped), 2 to 4 gateways joining and leaving, Redis paused (a silent
//! network), restarted empty and flushed. Against the simulator, which keeps Defender's quota
//! as a true sliding window over the arrival times it sees itself:
//!
//! - no window ever holds more than the limit: the simulator never answers a quota 429;
//! - once the schedule is over and demand still saturates the quota, the gateways together use
//!   at least 95 % of the longest window's calls (each window as long as the gateway counts
//!   it: the window plus the configured margin).
//!
//! Each case runs in real time (Redis decides on its own clock): about 20 s. Cases:
//! `QUOTA_SCHEDULES` (default 3); a failing case prints its schedule.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use defender_simulator::{EndpointFaults, Faults};
use proptest::{prelude::*, test_runner::TestCaseError};
use tokio::task::JoinHandle;
use tonic::Code;

use super::{Proxy, RedisServer, real_time_cases, real_time_runtime};
use crate::helpers::*;

/// The list API's quota in these tests, and the gateways' margin.
const QUOTA: &str = "8/1s,20/3s";
const LIMITS: [(u32, Duration); 2] = [(8, Duration::from_secs(1)), (20, Duration::from_secs(3))];
const MARGIN: Duration = Duration::from_millis(200);
/// The most gateways at once, which is also their configured replica count.
const MAX_GATEWAYS: usize = 4;

#[derive(Debug, Clone)]
enum Event {
    Calm,
    Join,
    /// A clean stop (SIGTERM) of the n-th running gateway (modulo their number).
    Leave(usize),
    /// Every token fetch from now on takes this long.
    SlowTokens(Duration),
    /// Every token issued so far is refused: the next calls fetch a new one (at the delay).
    RevokeTokens,
    /// Every new connection to the API takes this long to open.
    SlowConnections(Duration),
    /// Every open connection to the API is dropped: the next calls open new ones.
    DropConnections,
    /// The network to Redis goes silent for this long.
    PauseRedis(Duration),
    RestartRedis,
    FlushRedis,
}

#[derive(Debug, Clone)]
struct Schedule {
    gateways: usize,
    /// Callers per gateway.
    callers: usize,
    /// One event per second.
    events: Vec<Event>,
    /// Seeds each caller's arrivals, deadlines and drops.
    seed: u64,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => Just(Event::Calm),
        2 => Just(Event::Join),
        2 => (0..MAX_GATEWAYS).prop_map(Event::Leave),
        2 => (0..=3000u64).prop_map(|ms| Event::SlowTokens(Duration::from_millis(ms))),
        1 => Just(Event::RevokeTokens),
        2 => (0..=1500u64).prop_map(|ms| Event::SlowConnections(Duration::from_millis(ms))),
        1 => Just(Event::DropConnections),
        1 => (200..=3000u64).prop_map(|ms| Event::PauseRedis(Duration::from_millis(ms))),
        1 => Just(Event::RestartRedis),
        1 => Just(Event::FlushRedis),
    ]
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        2..=MAX_GATEWAYS,
        1..=3usize,
        prop::collection::vec(event(), 6..=8),
        any::<u64>(),
    )
        .prop_map(|(gateways, callers, events, seed)| Schedule {
            gateways,
            callers,
            events,
            seed,
        })
}

/// A small deterministic generator per caller (xorshift), so a schedule replays the same.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A loopback TCP proxy in front of the API whose new connections take a set time to open
/// (what the client writes meanwhile leaves once open, unless the client gave up), and which
/// can drop every open one.
struct SlowLink {
    addr: std::net::SocketAddr,
    delay: tokio::sync::watch::Sender<Duration>,
    generation: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl SlowLink {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (delay, delays) = tokio::sync::watch::channel(Duration::ZERO);
        let (generation, generations) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let wait = *delays.borrow();
                let mut generations = generations.clone();
                let born = *generations.borrow_and_update();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    // Opening: nothing the client wrote has left yet, and a client that gave up
                    // meanwhile (closed) sent nothing at all.
                    let mut early = Vec::new();
                    loop {
                        match client.try_read_buf(&mut early) {
                            Ok(0) => return,
                            Ok(_) => continue,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(_) => return,
                        }
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    if tokio::io::AsyncWriteExt::write_all(&mut server, &early)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = generations.wait_for(|g| *g != born) => {}
                    }
                });
            }
        });
        Self {
            addr,
            delay,
            generation,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One running gateway and its callers.
struct Running {
    app: TestGateway,
    stop: Arc<AtomicBool>,
    callers: Vec<JoinHandle<()>>,
}

/// What the callers saw.
#[derive(Default)]
struct Outcomes {
    ok: AtomicUsize,
    refused: AtomicUsize,
    unexpected: Mutex<Vec<String>>,
}

/// Calls ListScans until stopped: random gaps, random deadlines, and one call in five dropped
/// by the caller itself at a random moment (the gateway sees a cancelled stream). A steady
/// caller (seed 0) always waits up to 5 s and never lets go: demand that saturates the quota.
/// Every call lists a page of its own size (1 to 1,000 in turn): identical listings in flight
/// share one upstream call, and this demand must need one call each.
fn caller(
    app: &TestGateway,
    stop: Arc<AtomicBool>,
    seed: u64,
    seen: Arc<Outcomes>,
) -> JoinHandle<()> {
    let mut client = app.client.clone();
    tokio::spawn(async move {
        let mut rng = Rng(seed | 1);
        let steady = seed == 0;
        // Distinct per caller too: the steady caller counts up, the others start apart.
        let mut page = if steady { 0 } else { rng.below(1000) as u32 };
        let mut next_page = move || {
            page = page % 1000 + 1;
            page
        };
        while !stop.load(Ordering::Acquire) {
            if steady {
                let mut request = tonic::Request::new(scan_gateway::grpc::pb::ListScansRequest {
                    page_size: next_page(),
                    ..Default::default()
                });
                request.set_timeout(Duration::from_secs(5));
                match client.list_scans(request).await {
                    Ok(_) => seen.ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => seen.refused.fetch_add(1, Ordering::Relaxed),
                };
                continue;
            }
            let deadline = Duration::from_millis(50 + rng.below(2000));
            let mut request = tonic::Request::new(scan_gateway::grpc::pb::ListScansRequest {
                page_size: next_page(),
                ..Default::default()
            });
            request.set_timeout(deadline);
            let dropped_after = (rng.below(5) == 0).then(|| Duration::from_millis(rng.below(1500)));
            let call = client.list_scans(request);
            let outcome = match dropped_after {
                Some(after) => match tokio::time::timeout(after, call).await {
                    Ok(outcome) => outcome,
                    Err(_) => continue,
                },
                None => call.await,
            };
            match outcome {
                Ok(_) => {
                    seen.ok.fetch_add(1, Ordering::Relaxed);
                }
                // UNAVAILABLE: a dropped API connection took a call with it (an upstream 429
                // would be UNAVAILABLE too, but the simulator counts those itself).
                Err(status)
                    if matches!(
                        status.code(),
                        Code::ResourceExhausted
                            | Code::DeadlineExceeded
                            | Code::Cancelled
                            | Code::Unavailable
                    ) =>
                {
                    seen.refused.fetch_add(1, Ordering::Relaxed);
                }
                // A gateway stopping refuses new calls: not the quota's business.
                Err(_) if stop.load(Ordering::Acquire) => {}
                Err(status) => seen.unexpected.lock().unwrap().push(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                )),
            }
            tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
        }
    })
}

async fn join(
    sim: &Arc<TestSimulator>,
    api: &SlowLink,
    redis_url: &str,
    schedule: &Schedule,
    index: usize,
    seen: &Arc<Outcomes>,
) -> Running {
    let mut args = settings_for(sim);
    args.api_base_url = Some(api.url());
    args.quota = Some(QUOTA.into());
    args.quota_margin = Some(MARGIN);
    args.redis_url = Some(secret(redis_url));
    args.replicas = Some(MAX_GATEWAYS as u32);
    let app = spawn_gateway_sharing(sim.clone(), args).await;
    let stop = Arc::new(AtomicBool::new(false));
    let callers = (0..schedule.callers)
        .map(|c| {
            let seed = (schedule.seed
                ^ ((index * 31 + c) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .max(1);
            caller(&app, stop.clone(), seed, seen.clone())
        })
        .collect();
    Running { app, stop, callers }
}

async fn leave(running: Running) {
    running.stop.store(true, Ordering::Release);
    let _ = running.app.shutdown().await;
    for caller in running.callers {
        let _ = caller.await;
    }
}

fn token_delay(delay: Duration) -> Faults {
    Faults {
        token: EndpointFaults {
            latency: delay,
            ..EndpointFaults::default()
        },
        ..Faults::default()
    }
}

async fn run(schedule: Schedule) -> Result<(), TestCaseError> {
    let Some(redis) = RedisServer::start() else {
        return Ok(());
    };
    let redis = Arc::new(Mutex::new(redis));
    let port = redis.lock().unwrap().port;
    let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
    let mut config = fast_simulator();
    config.quota = LIMITS.to_vec();
    // Short-lived tokens: the gateways refresh them during the schedule, at the delay.
    config.token_lifetime = Duration::from_secs(4);
    let sim = Arc::new(spawn_simulator(config).await);
    let upstream = sim.base_url.trim_start_matches("http://").parse().unwrap();
    let api = SlowLink::start(upstream).await;
    let seen = Arc::new(Outcomes::default());
    let mut running = Vec::new();
    let mut joined = 0;
    for _ in 0..schedule.gateways {
        running.push(join(&sim, &api, &proxy.url(), &schedule, joined, &seen).await);
        joined += 1;
    }
    let mut unpause: Option<JoinHandle<()>> = None;
    let proxy = Arc::new(proxy);
    for event in &schedule.events {
        match event {
            Event::Calm => {}
            Event::Join if running.len() < MAX_GATEWAYS => {
                running.push(join(&sim, &api, &proxy.url(), &schedule, joined, &seen).await);
                joined += 1;
            }
            Event::Join => {}
            Event::Leave(n) if running.len() > 1 => {
                let gone = running.remove(n % running.len());
                leave(gone).await;
            }
            Event::Leave(_) => {}
            Event::SlowTokens(delay) => sim.handle.set_faults(token_delay(*delay)),
            Event::RevokeTokens => sim.handle.revoke_tokens(),
            Event::SlowConnections(delay) => {
                api.delay.send_replace(*delay);
            }
            Event::DropConnections => {
                api.generation.send_modify(|g| *g += 1);
            }
            Event::PauseRedis(pause) => {
                proxy.set_cut(true);
                let (proxy, pause) = (proxy.clone(), *pause);
                if let Some(previous) = unpause.take() {
                    previous.abort();
                }
                unpause = Some(tokio::spawn(async move {
                    tokio::time::sleep(pause).await;
                    proxy.set_cut(false);
                }));
            }
            Event::RestartRedis => {
                let redis = redis.clone();
                tokio::task::spawn_blocking(move || redis.lock().unwrap().restart())
                    .await
                    .unwrap();
            }
            Event::FlushRedis => redis.lock().unwrap().flush_all(),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The schedule is over: the network heals, tokens come fast again, demand goes on. After
    // two longest windows (every hold of the schedule has ended), one more is measured.
    if let Some(pending) = unpause.take() {
        pending.abort();
    }
    proxy.set_cut(false);
    sim.handle.set_faults(Faults::default());
    api.delay.send_replace(Duration::ZERO);
    for gateway in &mut running {
        let steady = caller(&gateway.app, gateway.stop.clone(), 0, seen.clone());
        gateway.callers.push(steady);
    }
    let (calls, window) = LIMITS[1];
    let counted = window + MARGIN;
    tokio::time::sleep(counted * 2).await;
    let before = sim.handle.stats().list_actions;
    tokio::time::sleep(counted).await;
    let used = sim.handle.stats().list_actions - before;
    for gone in running {
        leave(gone).await;
    }
    let stats = sim.handle.stats();
    let unexpected = seen.unexpected.lock().unwrap().clone();
    eprintln!(
        "{schedule:?}: ok {}, refused {}, quota 429s {}, {used} of {calls} calls in the last {counted:?}",
        seen.ok.load(Ordering::Relaxed),
        seen.refused.load(Ordering::Relaxed),
        stats.throttled
    );
    prop_assert_eq!(
        stats.throttled,
        0,
        "the simulator refused calls over its quota"
    );
    prop_assert!(
        used * 100 >= u64::from(calls) * 95,
        "{} of {} calls used in the last window of saturating demand",
        used,
        calls
    );
    prop_assert!(
        unexpected.is_empty(),
        "unexpected outcomes: {:?}",
        unexpected
    );
    Ok(())
}

proptest! {
    #![proptest_config(real_time_cases("QUOTA_SCHEDULES", 3))]

    #[test]
    fn no_schedule_exceeds_the_quota_and_saturating_demand_uses_it(schedule in schedule()) {
        real_time_runtime().block_on(run(schedule))?;
    }
}

/// Schedules found failing, kept: one 429 from a token that expired while calls waited for
/// their slot (the auth step then fetched after admission), and a return from a fallback that
/// replaced the fresh epoch after a restart and forgot the lost data; two 429s from calls that
/// reached the API late over new connections, counted from their admission; and one where
/// identical listings shared upstream calls (single flight), so the "saturating" demand used
/// only 15 of 20 calls: the callers now list distinct pages.
#[test]
fn the_schedules_found_failing_hold_the_quota() {
    let found = [
        Schedule {
            gateways: 2,
            callers: 1,
            events: vec![
                Event::DropConnections,
                Event::Join,
                Event::SlowConnections(Duration::from_millis(49)),
                Event::Calm,
                Event::Leave(2),
                Event::Calm,
            ],
            seed: 17648512841444734725,
        },
        Schedule {
            gateways: 4,
            callers: 1,
            events: vec![
                Event::RestartRedis,
                Event::Calm,
                Event::SlowTokens(Duration::from_millis(1539)),
                Event::Leave(1),
                Event::Leave(3),
                Event::PauseRedis(Duration::from_millis(1550)),
            ],
            seed: 9360482750219961716,
        },
        Schedule {
            gateways: 3,
            callers: 3,
            events: vec![
                Event::DropConnections,
                Event::SlowConnections(Duration::from_millis(862)),
                Event::Calm,
                Event::Calm,
                Event::PauseRedis(Duration::from_millis(385)),
                Event::Join,
            ],
            seed: 7088637134637676156,
        },
    ];
    let runtime = real_time_runtime();
    for schedule in found {
        runtime.block_on(run(schedule)).unwrap();
    }
}
