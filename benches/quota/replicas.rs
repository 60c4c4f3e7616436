//! The quota shared through Redis, in real time, compressed 60 times: one replica beside four
//! that join and leave through one Redis flush.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use defender_simulator::{SimState, SimulatorConfig};
use scan_gateway::{
    clock::Clock,
    outbound::{Admit, Retry, UpstreamMetrics},
    quota::{
        Limit, Limits, Quota, QuotaConfig, QuotaMetrics, SharedConfig, SharedMetrics, SharedStore,
        Store,
    },
    upstream::{ActionQuery, CallContext, DefenderClient},
};
use tokio::{task::JoinHandle, time::Instant};
use tower::util::BoxCloneSyncService;

use super::{throttled, token, upstream};

/// One simulated hour, compressed: 100/min and 1,500/h become these.
const SHORT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(60);
/// How long each run lasts: one long window.
const RUN: Duration = LONG;
const MARGIN: Duration = Duration::from_millis(50);
const CALLERS_PER_REPLICA: usize = 12;

/// A private `redis-server` on a free loopback port, without persistence.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let binary = ["redis-server", ".tools/bin/redis-server"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())?;
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Self { port, child };
        for _ in 0..100 {
            if redis.command(b"PING\r\n", b"+PONG") {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn command(&self, command: &[u8], expect: &[u8]) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = vec![0u8; expect.len()];
        stream.write_all(command).is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && reply == expect
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One gateway replica: its own quota (sharing Redis) and its callers.
struct Replica {
    quota: Arc<Quota>,
    stop: Arc<AtomicBool>,
    callers: Vec<JoinHandle<()>>,
}

fn replica(
    redis: &Redis,
    prefix: &str,
    router: &axum::Router,
    token: &str,
    served: &Arc<AtomicU64>,
) -> Replica {
    let limits = Limits::uniform(vec![
        Limit {
            calls: 100,
            window: SHORT + MARGIN,
        },
        Limit {
            calls: 1500,
            window: LONG + MARGIN,
        },
    ]);
    let store = SharedStore::new(
        SharedConfig {
            url: redis.url().into(),
            replicas: 4,
            prefix: prefix.into(),
            timeout: Duration::from_millis(300),
        },
        limits.clone(),
        SharedMetrics::default(),
    )
    .expect("a valid Redis URL");
    let config = QuotaConfig {
        limits,
        max_wait: Duration::from_secs(5),
        max_queue: 10_000,
        margin: MARGIN,
        background_floor: scan_gateway::quota::DEFAULT_BACKGROUND_FLOOR,
    };
    let quota = Arc::new(Quota::new(
        &config,
        Store::Shared(Box::new(store)),
        Clock::system(),
        QuotaMetrics::default(),
    ));
    let service = BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .layer(Retry::layer(quota.clone(), UpstreamMetrics::default()))
            .layer(Admit::layer(quota.clone()))
            .service(upstream(router.clone(), token.to_owned())),
    );
    let base = url::Url::parse("http://simulator.invalid").expect("a URL");
    let client = DefenderClient::new(base, service, Clock::system());
    let stop = Arc::new(AtomicBool::new(false));
    let callers = (0..CALLERS_PER_REPLICA)
        .map(|_| {
            let (client, stop, served) = (client.clone(), stop.clone(), served.clone());
            tokio::spawn(async move {
                let query = ActionQuery {
                    top: Some(1),
                    ..ActionQuery::default()
                };
                while !stop.load(Ordering::Acquire) {
                    let ctx = CallContext {
                        deadline: Some(Instant::now() + Duration::from_secs(2)),
                        ..CallContext::default()
                    };
                    if client.list_actions(&query, &ctx).await.is_ok() {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    Replica {
        quota,
        stop,
        callers,
    }
}

async fn leave(replica: Replica) {
    replica.stop.store(true, Ordering::Release);
    for caller in replica.callers {
        let _ = caller.await;
    }
    replica.quota.leave().await;
}

struct Outcome {
    served: u64,
    throttled: u64,
}

/// `start` replicas at once, then the events (seconds from the start) until the run ends.
async fn run(redis: &Redis, prefix: &str, start: usize, events: &[(u64, Event)]) -> Outcome {
    let config = SimulatorConfig {
        token_lifetime: Duration::from_secs(7200),
        quota: vec![(100, SHORT), (1500, LONG)],
        ..SimulatorConfig::demo()
    };
    let router = defender_simulator::app(SimState::new(config, Clock::system()));
    let token = token(&router).await;
    let served = Arc::new(AtomicU64::new(0));
    let begin = Instant::now();
    let mut running: Vec<Replica> = (0..start)
        .map(|_| replica(redis, prefix, &router, &token, &served))
        .collect();
    for (at, event) in events {
        tokio::time::sleep_until(begin + Duration::from_secs(*at)).await;
        match event {
            Event::Join => running.push(replica(redis, prefix, &router, &token, &served)),
            Event::Leave => {
                if let Some(gone) = running.pop() {
                    leave(gone).await;
                }
            }
            Event::Flush => {
                assert!(redis.command(b"FLUSHALL\r\n", b"+OK"), "FLUSHALL");
            }
        }
    }
    tokio::time::sleep_until(begin + RUN).await;
    let served = served.load(Ordering::Relaxed);
    for gone in running {
        leave(gone).await;
    }
    Outcome {
        served,
        throttled: throttled(router).await,
    }
}

enum Event {
    Join,
    Leave,
    Flush,
}

pub fn compare() {
    let Some(redis) = Redis::start() else {
        println!(
            "\nshared quota: skipped, no redis-server (scripts/install-test-tools.sh installs one)"
        );
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (one, four) = runtime.block_on(async {
        let one = run(&redis, "bench-one", 1, &[]).await;
        // Two at first; an HPA adds two, Redis restarts empty, then it scales down twice.
        let events = [
            (8, Event::Join),
            (16, Event::Join),
            (30, Event::Flush),
            (40, Event::Leave),
            (50, Event::Leave),
        ];
        let four = run(&redis, "bench-four", 2, &events).await;
        (one, four)
    });
    println!(
        "\nshared quota through Redis, real time compressed 60x (100/s and 1,500/min for 100/min and 1,500/h), {}s of saturating demand ({CALLERS_PER_REPLICA} callers per replica):",
        RUN.as_secs()
    );
    println!(
        "{:<50} {:>12} {:>18} {:>14}",
        "replicas", "calls served", "share of 1,500", "upstream 429s"
    );
    for (name, outcome) in [
        ("1 replica", &one),
        ("2-4 replicas: joins, leaves, one Redis flush", &four),
    ] {
        println!(
            "{:<50} {:>12} {:>17.1}% {:>14}",
            name,
            outcome.served,
            100.0 * outcome.served as f64 / 1500.0,
            outcome.throttled
        );
    }
}
