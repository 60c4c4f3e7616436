//! The quota shared through a real `redis-server` (started here on a free loopback port): two
//! gateways together never exceed the simulator's quota, including while Redis is down and after it
//! restarts empty, and two replicas never exceed it while only one of them is cut off from Redis
//! (through a proxy the test cuts). Outside CI the tests skip, saying why, when `redis-server` is
//! missing; in CI (`CI` set) they fail instead.
//!
//! A test binary of its own: cargo runs test binaries one after another, so these timing-
//! sensitive tests do not share the two cores with the rest of the suite.

// The helpers serve the whole API suite; this binary uses a few of them.
mod epochs;
mod estimate;
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
mod idempotency;
mod key_schedules;
mod redis_return;
mod schedules;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use scan_gateway::{
    grpc::pb,
    quota::{
        Admission, Limit, Limits, LocalStore, SharedConfig, SharedMetrics, SharedStore, shared,
    },
    upstream::Api,
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a private redis-server, or returns `None` (skip) outside CI when there is none.
    fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is required in CI: run scripts/install-test-tools.sh"
            );
            eprintln!(
                "skipping: redis-server is not installed (scripts/install-test-tools.sh installs it)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self { port, child: None };
        server.restart();
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port, empty: no persistence, as a restarted cache would be.
    fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..100 {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer PING within 5 s");
    }

    /// Redis loses every key, as a restart without persistence does (the connections stay).
    fn flush_all(&self) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis answers");
        stream.write_all(b"FLUSHALL\r\n").unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK\r\n");
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut reply = [0u8; 5];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn limits(pairs: &[(u32, u64)]) -> Vec<Limit> {
    pairs
        .iter()
        .map(|&(calls, ms)| Limit {
            calls,
            window: Duration::from_millis(ms),
        })
        .collect()
}

/// One of two replicas sharing 10 calls a second through the Redis at `url`.
fn one_of_two(url: &str, prefix: &str) -> Arc<SharedStore> {
    Arc::new(
        SharedStore::new(
            SharedConfig {
                url: secret(url),
                replicas: 2,
                prefix: prefix.into(),
                timeout: Duration::from_millis(200),
            },
            Limits::uniform(limits(&[(10, 1000)])),
            SharedMetrics::default(),
        )
        .unwrap(),
    )
}

/// Proptest settings for cases that run in real time (seconds each): `env` cases (else
/// `default`); no shrinking, which would take hours (a failing case prints its schedule), and
/// nothing persisted.
fn real_time_cases(env: &str, default: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: std::env::var(env)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default),
        max_shrink_iters: 0,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// A runtime for one real-time case, as the gateways run: two worker threads.
fn real_time_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Joins `stores` to a fresh epoch and waits out its gathering: a fresh epoch admits nothing
/// until every replica that was present can have joined.
async fn settle(stores: &[&SharedStore]) {
    for store in stores {
        assert!(
            matches!(
                store.try_admit(Api::GetAction, Instant::now()).await,
                Admission::NotBefore(_)
            ),
            "a fresh epoch admitted a call before its gathering ended"
        );
    }
    tokio::time::sleep(shared::GATHERING + Duration::from_millis(100)).await;
}

#[tokio::test]
async fn the_shared_store_decides_like_the_in_process_one_for_the_same_arrivals() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let limits = Limits::uniform(limits(&[(3, 1000), (5, 3000)]));
    let shared = SharedStore::new(
        SharedConfig {
            url: secret(&redis.url()),
            replicas: 1,
            prefix: "test-identical".into(),
            timeout: Duration::from_millis(500),
        },
        limits.clone(),
        SharedMetrics::default(),
    )
    .unwrap();
    settle(&[&shared]).await;
    let local = LocalStore::new(&limits);
    let start = Instant::now();
    // Arrivals at 0, 0, 0, 0, then each at the instant the store names.
    let mut now = start;
    for step in 0..8 {
        let (l, s) = (
            local.try_admit(Api::GetAction, now),
            shared.try_admit(Api::GetAction, now).await,
        );
        match (l, s) {
            (Admission::Admitted, Admission::Admitted) => {}
            (Admission::NotBefore(a), Admission::NotBefore(b)) => {
                let gap = if a > b { a - b } else { b - a };
                assert!(
                    gap < Duration::from_millis(100),
                    "step {step}: {a:?} vs {b:?}"
                );
                // Both wait, then the next arrival comes when a call fits.
                tokio::time::sleep_until(a.max(b) + Duration::from_millis(5)).await;
                now = Instant::now();
                continue;
            }
            other => panic!("step {step}: local and shared disagree: {other:?}"),
        }
        now = Instant::now();
    }
    assert!(Instant::now() - start >= Duration::from_millis(1000));
}

/// Calls ListScans from `workers` loops until `until`; returns (ok, refused or late) and
/// fails on any other outcome (UNAVAILABLE would mean a 429 got through).
async fn drive(app: &TestGateway, workers: usize, until: Instant) -> (usize, usize) {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let mut client = app.client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0, 0);
            while Instant::now() < until {
                let mut request = tonic::Request::new(pb::ListScansRequest {
                    page_size: 1,
                    ..Default::default()
                });
                request.set_timeout(Duration::from_millis(1500));
                match client.list_scans(request).await {
                    Ok(_) => ok += 1,
                    // Refused by the quota, or admitted too close to the deadline.
                    // A well-behaved caller waits as RetryInfo says before asking again.
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::ResourceExhausted | Code::DeadlineExceeded
                        ) =>
                    {
                        refused += 1;
                        let delay = status
                            .get_details_retry_info()
                            .and_then(|r| r.retry_delay)
                            .unwrap_or(Duration::from_millis(50));
                        tokio::time::sleep_until((Instant::now() + delay).min(until)).await;
                    }
                    Err(status) => panic!("unexpected {status:?}"),
                }
            }
            (ok, refused)
        }));
    }
    let mut totals = (0, 0);
    for task in tasks {
        let (ok, refused) = task.await.unwrap();
        totals.0 += ok;
        totals.1 += refused;
    }
    totals
}

/// Calls of the list API admitted by one gateway's quota.
fn admitted(metrics: &str) -> usize {
    metrics
        .lines()
        .find(|l| l.starts_with(r#"scan_gateway_quota_admitted_total{api="list_machine_actions"}"#))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fallback_gauge(metrics: &str) -> Option<&str> {
    metrics
        .lines()
        .find(|l| l.starts_with("scan_gateway_quota_fallback "))
        .and_then(|l| l.split_whitespace().nth(1))
}

// Two worker threads, and Redis stopped and started off the runtime, so the gateways keep
// serving while the test waits for redis-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_redis_never_exceed_the_quota_even_through_a_redis_outage() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A compressed quota: 10 per second and 30 per 5 seconds, enforced (429) by the simulator.
    let mut config = fast_simulator();
    config.quota = vec![(10, Duration::from_secs(1)), (30, Duration::from_secs(5))];
    let sim = Arc::new(spawn_simulator(config).await);
    let _ = tracing_subscriber::fmt()
        .with_env_filter("scan_gateway::quota=debug,defender_simulator::gate=debug")
        .try_init();
    let url = redis.url();
    let gateway = |sim: Arc<TestSimulator>| {
        let mut args = settings_for(&sim);
        args.quota = Some("10/1s,30/5s".into());
        args.quota_margin = Some(Duration::from_millis(300));
        args.redis_url = Some(secret(&url));
        args.replicas = Some(2);
        spawn_gateway_sharing(sim, args)
    };
    let a = gateway(sim.clone()).await;
    let b = gateway(sim.clone()).await;
    // One call each waits out the fresh epoch's gathering.
    for app in [&a, &b] {
        let mut client = app.client.clone();
        client
            .list_scans(pb::ListScansRequest::default())
            .await
            .expect("the first call is admitted once the epoch has gathered");
    }

    // Shared: together they use the quota.
    let until = Instant::now() + Duration::from_millis(2500);
    let (phase_a, phase_b) = tokio::join!(drive(&a, 3, until), drive(&b, 3, until));
    let shared_ok = phase_a.0 + phase_b.0;
    assert!(
        shared_ok >= 20,
        "{shared_ok} calls admitted in 2.5 s of shared mode"
    );

    // Redis goes away: each falls back to its share, and the quota still holds.
    let mut redis = tokio::task::spawn_blocking(move || {
        let mut redis = redis;
        redis.stop();
        redis
    })
    .await
    .unwrap();
    // Neither can tell a Redis outage from its own partition: each waits out its quarantine
    // (about 2.5 s) and, in the worst case, one window (5 s) in which the other may have
    // used its share before it spends what is left of its share.
    let until = Instant::now() + Duration::from_millis(9000);
    let (fa, fb) = tokio::join!(drive(&a, 3, until), drive(&b, 3, until));
    assert_eq!(fallback_gauge(&a.metrics().await), Some("1"));
    assert_eq!(fallback_gauge(&b.metrics().await), Some("1"));

    // Redis returns, empty: the gateways write back what they did and share again.
    let _redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let until = Instant::now() + Duration::from_millis(3000);
    let (ra, rb) = tokio::join!(drive(&a, 3, until), drive(&b, 3, until));
    assert_eq!(fallback_gauge(&a.metrics().await), Some("0"));
    assert_eq!(fallback_gauge(&b.metrics().await), Some("0"));

    let stats = sim.handle.stats();
    let admitted = admitted(&a.metrics().await) + admitted(&b.metrics().await);
    eprintln!(
        "admitted: shared {shared_ok}, fallback {}, after restart {}; simulator saw {} list calls, {} throttled",
        fa.0 + fb.0,
        ra.0 + rb.0,
        stats.list_actions,
        stats.throttled
    );
    assert_eq!(stats.throttled, 0, "the simulator answered 429");
    // A call admitted just before its deadline may give up without sending: never more
    // upstream calls than admissions.
    assert!(
        stats.list_actions as usize <= admitted,
        "{} list calls reached upstream, {admitted} were admitted",
        stats.list_actions
    );
    assert!(
        fa.0 + fb.0 > 0,
        "the fallback admitted calls once the windows slid"
    );
    assert!(ra.0 + rb.0 > 0, "shared mode resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_id_on_two_gateways_sharing_redis_starts_one_scan() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_secs(60);
    let sim = Arc::new(spawn_simulator(config).await);
    let url = redis.url();
    let gateway = |sim: Arc<TestSimulator>| {
        let mut args = settings_for(&sim);
        args.redis_url = Some(secret(&url));
        args.replicas = Some(2);
        spawn_gateway_sharing(sim, args)
    };
    let a = gateway(sim.clone()).await;
    let b = gateway(sim.clone()).await;
    let mut request = start_request(&sim.machine(0));
    request.request_id = "incident-4711/scan".into();

    let calls: Vec<_> = (0..6)
        .map(|i| {
            let mut client = if i % 2 == 0 {
                a.client.clone()
            } else {
                b.client.clone()
            };
            let request = request.clone();
            tokio::spawn(async move { client.start_scan(request).await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for call in calls {
        ids.insert(call.await.unwrap().unwrap().into_inner().action.unwrap().id);
    }
    assert_eq!(ids.len(), 1, "one action for one key: {ids:?}");
    assert_eq!(sim.handle.stats().run_scan, 1, "one upstream call");

    // The same key for another machine is refused on either gateway.
    let mut other = request.clone();
    other.machine_id = sim.machine(1);
    let status = b.client.clone().start_scan(other).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// A loopback TCP proxy to Redis that the test can cut: while cut it forwards nothing and
/// holds every connection open, as a network partition does (calls time out, they are not
/// refused).
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(Self::serve(client, upstream, watching.clone()));
            }
        });
        Self { addr, cut, task }
    }

    async fn serve(
        mut client: tokio::net::TcpStream,
        upstream: SocketAddr,
        mut cut: watch::Receiver<bool>,
    ) {
        if !*cut.borrow() {
            let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                _ = cut.wait_for(|cut| *cut) => {}
            }
        }
        // Cut: hold the client's connection, silent, until the cut ends; then close it.
        let _ = cut.wait_for(|cut| !*cut).await;
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asks `store` for quota back to back until `until`, noting when each call was admitted;
/// returns how many were.
async fn keep_asking(
    store: Arc<SharedStore>,
    until: Instant,
    log: Arc<Mutex<Vec<Instant>>>,
) -> usize {
    let mut admitted = 0;
    while Instant::now() < until {
        let asked = Instant::now();
        match store.try_admit(Api::GetAction, asked).await {
            // The decision was made between asking and the answer: note the middle.
            Admission::Admitted => {
                let answered = Instant::now();
                log.lock().unwrap().push(asked + (answered - asked) / 2);
                admitted += 1;
            }
            Admission::NotBefore(at) => {
                let next = at.clamp(
                    asked + Duration::from_millis(1),
                    asked + Duration::from_millis(50),
                );
                tokio::time::sleep_until(next.min(until)).await;
            }
        }
    }
    admitted
}

/// The most admissions in any window of `window` (less `slack` for the uncertainty of when
/// each was decided).
fn busiest_window(admissions: &[Instant], window: Duration, slack: Duration) -> usize {
    let mut sorted = admissions.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|&&t| t < sorted[i] + window - slack)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_redis_never_spends_its_share_while_the_other_may_use_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let store = |url: String| one_of_two(&url, "test-partition");
    // A reaches Redis directly, B through the proxy.
    let a = store(redis.url());
    let b = store(proxy.url());
    settle(&[&a, &b]).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let phase = |millis: u64| {
        let until = Instant::now() + Duration::from_millis(millis);
        let (a, b, log) = (a.clone(), b.clone(), log.clone());
        async move {
            tokio::join!(
                keep_asking(a, until, log.clone()),
                keep_asking(b, until, log.clone())
            )
        }
    };

    let (shared_a, shared_b) = phase(2000).await;
    assert!(!a.in_fallback() && !b.in_fallback());

    // B loses Redis, A keeps it. B waits out its quarantine (about 2.5 s) and whatever A may
    // have spent of B's share meanwhile (one window), then spends what is left of its share.
    proxy.set_cut(true);
    let (cut_a, cut_b) = phase(5000).await;
    assert!(b.in_fallback(), "B noticed it lost Redis");
    assert!(!a.in_fallback(), "A kept Redis");

    // B reaches Redis again: it writes its calls back and both share again.
    proxy.set_cut(false);
    let (healed_a, healed_b) = phase(2500).await;
    assert!(!a.in_fallback() && !b.in_fallback(), "both share again");

    let admissions = log.lock().unwrap().clone();
    let busiest = busiest_window(
        &admissions,
        Duration::from_secs(1),
        Duration::from_millis(50),
    );
    eprintln!(
        "admitted by A, B: shared {shared_a}, {shared_b}; cut {cut_a}, {cut_b}; \
         healed {healed_a}, {healed_b}; busiest window {busiest}"
    );
    assert!(
        busiest <= 10,
        "{busiest} admissions within one window of 10 calls"
    );
    assert!(
        shared_a + shared_b >= 15,
        "too few admissions in shared mode"
    );
    assert!(cut_a >= 10, "A kept admitting while B was cut off");
    assert!(
        cut_b > 0,
        "B spent what was left of its share once the window slid"
    );
    assert!(healed_a > 0 && healed_b > 0, "both admit after the cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_stays_present_and_a_stopped_one_has_its_share_held_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = || one_of_two(&redis.url(), "test-liveness");
    let (a, b) = (store(), store());
    settle(&[&a, &b]).await;
    // B joins the epoch with one call, then stays idle.
    assert_eq!(
        b.try_admit(Api::GetAction, Instant::now()).await,
        Admission::Admitted
    );
    // Longer than the alive key lives: only B's heartbeat keeps it present, so A may use the
    // whole quota (holding back B's share would leave A 5 per window).
    let log = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + shared::ALIVE_TTL + Duration::from_millis(1500);
    keep_asking(a.clone(), until, log.clone()).await;
    let recent: Vec<Instant> = log
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|&t| t + Duration::from_millis(1200) > until)
        .collect();
    let busiest = busiest_window(&recent, Duration::from_secs(1), Duration::from_millis(50));
    eprintln!("busiest window of A beside an idle B: {busiest}");
    assert!(
        busiest > 5,
        "A used more than its share beside an idle but present B: {busiest}"
    );

    // B stops (its heartbeat with it) without a word: once its alive key has expired, A
    // holds back B's share, for B may be deciding on its own.
    drop(b);
    tokio::time::sleep(shared::ALIVE_TTL + Duration::from_millis(200)).await;
    log.lock().unwrap().clear();
    let until = Instant::now() + Duration::from_millis(2200);
    keep_asking(a.clone(), until, log.clone()).await;
    let admissions = log.lock().unwrap().clone();
    let busiest = busiest_window(
        &admissions,
        Duration::from_secs(1),
        Duration::from_millis(50),
    );
    eprintln!("busiest window of A beside a stopped B: {busiest}");
    assert!(
        (1..=5).contains(&busiest),
        "A kept to its share once B was gone: {busiest}"
    );
}

#[tokio::test]
async fn a_replica_that_leaves_cleanly_hands_its_share_back_for_good() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = || one_of_two(&redis.url(), "test-leave");
    let (a, b) = (store(), store());
    settle(&[&a, &b]).await;
    for replica in [&a, &b] {
        assert_eq!(
            replica.try_admit(Api::GetAction, Instant::now()).await,
            Admission::Admitted
        );
    }
    // Past the epoch's first window, when replicas that never joined are no longer awaited.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // B stops cleanly (as at the end of a SIGTERM drain). Without leaving, A would hold B's
    // share back once B's alive key lapsed (see the test above); having left, B is not
    // counted any more.
    b.leave().await;
    drop(b);
    tokio::time::sleep(shared::ALIVE_TTL + Duration::from_millis(200)).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_millis(1200);
    keep_asking(a.clone(), until, log.clone()).await;
    let admissions = log.lock().unwrap().clone();
    let busiest = busiest_window(
        &admissions,
        Duration::from_secs(1),
        Duration::from_millis(50),
    );
    eprintln!("busiest window of A after B left: {busiest}");
    assert!(busiest > 5, "A still held B's share back: {busiest}");
    assert!(busiest <= 10, "the quota held: {busiest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_to_shared_mode_abandoned_midway_leaves_the_replica_free_to_return_later() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let store = one_of_two(&proxy.url(), "test-abandoned-return");
    settle(&[&store]).await;
    assert_eq!(
        store.try_admit(Api::GetAction, Instant::now()).await,
        Admission::Admitted
    );
    // Redis goes silent: the next decision times out and the replica falls back.
    proxy.set_cut(true);
    let _ = store.try_admit(Api::GetAction, Instant::now()).await;
    assert!(store.in_fallback());
    // Past the probe interval, a call starts the return to shared mode, which hangs on the
    // silent connection, and its caller gives up (a deadline, a cancelled RPC). The idle
    // heartbeat probes too, and may be the one returning at that moment: then try again.
    let mut abandoned = false;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let call = tokio::time::timeout(
            Duration::from_millis(50),
            store.try_admit(Api::GetAction, Instant::now()),
        )
        .await;
        if call.is_err() {
            abandoned = true;
            break;
        }
    }
    assert!(
        abandoned,
        "no call's return ever waited on the silent Redis"
    );
    // Redis answers again: a later call returns the replica to shared mode.
    proxy.set_cut(false);
    let until = Instant::now() + Duration::from_secs(10);
    let mut shared = false;
    while Instant::now() < until {
        let admission = store.try_admit(Api::GetAction, Instant::now()).await;
        if admission == Admission::Admitted && !store.in_fallback() {
            shared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shared, "the replica never returned to the shared quota");
}
