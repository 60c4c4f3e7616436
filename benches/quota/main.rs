//! Saturating demand against the Defender simulator over one simulated hour, side by side:
//! scan-gateway's quota (the real `DefenderClient` over the real quota layer) against a
//! reactive client that fires and retries after `Retry-After` on 429, as Defender's peers do.
//!
//! Time is tokio's paused clock, which the simulator and the quota both read, so the hour
//! passes in seconds and the code paths are the production ones; only the socket is replaced
//! by an in-process call into the simulator's router.
//!
//! Then the quota shared through Redis (a private `redis-server` on a loopback port), in real
//! time since Redis decides on its own clock, compressed 60 times (100/s and 1,500/min for
//! 100/min and 1,500/h): one replica, side by side with four that join and leave as an HPA's
//! would, through one Redis flush (a restart without persistence).
//!
//! Run: `cargo bench --bench quota`

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::Router;
use bytes::Bytes;
use defender_simulator::{SimState, SimulatorConfig};
use scan_gateway::{
    clock::Clock,
    outbound::{Admit, Retry, UpstreamMetrics},
    quota::{Limit, Limits, Quota, QuotaConfig, QuotaMetrics},
    upstream::{ActionQuery, CallContext, DefenderClient, Error, Request, Response},
};
use tokio::time::Instant;

mod replicas;
use tower::{ServiceExt, service_fn, util::BoxCloneSyncService};

const CALLERS: usize = 50;
const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

fn simulator() -> Router {
    let config = SimulatorConfig {
        token_lifetime: 2 * HOUR,
        quota: vec![(100, MINUTE), (1500, HOUR)],
        ..SimulatorConfig::demo()
    };
    defender_simulator::app(SimState::new(config, Clock::system()))
}

async fn token(router: &Router) -> String {
    let config = SimulatorConfig::demo();
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret=simulator-secret&scope=https%3A%2F%2Fapi.securitycenter.microsoft.com%2F.default",
        config.client_id
    );
    let request = http::Request::post(format!("/{}/oauth2/v2.0/token", config.tenant_id))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .expect("a valid request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a body");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a token response");
    json["access_token"].as_str().expect("a token").to_owned()
}

/// The simulator as the innermost service of the stack, in place of reqwest.
fn upstream(router: Router, token: String) -> BoxCloneSyncService<Request, Response, Error> {
    BoxCloneSyncService::new(service_fn(move |request: Request| {
        let router = router.clone();
        let bearer = format!("Bearer {token}");
        async move {
            let (mut parts, body) = request.into_parts();
            parts
                .headers
                .insert("authorization", bearer.parse().expect("a header value"));
            let request = http::Request::from_parts(parts, axum::body::Body::from(body));
            let response = router.oneshot(request).await.expect("infallible");
            let (parts, body) = response.into_parts();
            let body: Bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .expect("a body");
            Ok::<_, Error>(http::Response::from_parts(parts, body))
        }
    }))
}

struct Outcome {
    admitted: u64,
    throttled: u64,
}

/// `CALLERS` callers list actions as fast as they are let, for one hour.
async fn saturate(client: DefenderClient, reactive: bool) -> u64 {
    let end = Instant::now() + HOUR;
    let ok = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let client = client.clone();
        let ok = ok.clone();
        callers.push(tokio::spawn(async move {
            let query = ActionQuery {
                top: Some(1),
                ..ActionQuery::default()
            };
            loop {
                let ctx = CallContext {
                    deadline: Some(end),
                    ..CallContext::default()
                };
                match client.list_actions(&query, &ctx).await {
                    Ok(_) if Instant::now() < end => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::Api(api)) if reactive && api.status == 429 => {
                        let wait = api.retry_after.unwrap_or(Duration::from_secs(1));
                        tokio::time::sleep(wait).await;
                    }
                    _ => return,
                }
                if Instant::now() >= end {
                    return;
                }
            }
        }));
    }
    for caller in callers {
        let _ = caller.await;
    }
    ok.load(Ordering::Relaxed)
}

async fn run(reactive: bool) -> Outcome {
    let router = simulator();
    let token = token(&router).await;
    let base = url::Url::parse("http://simulator.invalid").expect("a URL");
    let stats_router = router.clone();
    let inner = upstream(router, token);
    let service = if reactive {
        inner
    } else {
        let limits = Limits::uniform(vec![
            Limit {
                calls: 100,
                window: MINUTE + Duration::from_millis(250),
            },
            Limit {
                calls: 1500,
                window: HOUR + Duration::from_millis(250),
            },
        ]);
        let config = QuotaConfig {
            limits,
            max_wait: 2 * HOUR,
            max_queue: 10_000,
            margin: Duration::from_millis(250),
            background_floor: scan_gateway::quota::DEFAULT_BACKGROUND_FLOOR,
        };
        let quota = Arc::new(Quota::local(
            &config,
            Clock::system(),
            QuotaMetrics::default(),
        ));
        // The stack's retry policy over its quota, as in production.
        BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .layer(Retry::layer(quota.clone(), UpstreamMetrics::default()))
                .layer(Admit::layer(quota))
                .service(inner),
        )
    };
    let admitted = saturate(
        DefenderClient::new(base, service, Clock::system()),
        reactive,
    )
    .await;
    Outcome {
        admitted,
        throttled: throttled(stats_router).await,
    }
}

/// The simulator's count of calls it refused over its quota (429).
async fn throttled(router: Router) -> u64 {
    let stats = router
        .oneshot(
            http::Request::get("/simulator/stats")
                .body(axum::body::Body::empty())
                .expect("a request"),
        )
        .await
        .expect("infallible");
    let body = axum::body::to_bytes(stats.into_body(), usize::MAX)
        .await
        .expect("a body");
    let stats: serde_json::Value = serde_json::from_slice(&body).expect("stats");
    stats["throttled"].as_u64().unwrap_or(0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let started = tokio::time::Instant::now();
    let (gateway, reactive) = runtime.block_on(async { (run(false).await, run(true).await) });
    let share = |o: &Outcome| 100.0 * o.admitted as f64 / 1500.0;
    println!(
        "saturating demand: {CALLERS} callers listing actions for one simulated hour; limits 100/min and 1,500/h"
    );
    println!(
        "{:<28} {:>14} {:>22} {:>14}",
        "client", "calls served", "share of 1,500/h", "upstream 429s"
    );
    for (name, outcome) in [
        ("scan-gateway quota", &gateway),
        ("reactive (retry on 429)", &reactive),
    ] {
        println!(
            "{:<28} {:>14} {:>21.1}% {:>14}",
            name,
            outcome.admitted,
            share(outcome),
            outcome.throttled
        );
    }
    println!("(both runs took {:.1?} of real time)", started.elapsed());
    // Real time (minutes): only under `cargo bench`, not when `cargo test --all-targets` runs
    // this main as a smoke test.
    if std::env::args().any(|a| a == "--bench") {
        replicas::compare();
    } else {
        println!("shared quota: skipped (run it with `cargo bench --bench quota`)");
    }
}
