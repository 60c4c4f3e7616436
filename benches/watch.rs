//! The watcher's cost, side by side in one run, for 1,000 and 10,000 followed actions at a
//! 10 s freshness: upstream status calls per minute (next to what per-action polling would
//! need), the gateway's RSS with every stream open, and the delay from a status change in the
//! simulator to its delivery on a stream.
//!
//! The gateway runs as its own process (the release binary) so its RSS is its own; the
//! simulator and the stream clients run in this process. Everything is on 127.0.0.1.
//!
//! Run: `cargo bench --bench watch` (about three minutes).

#[path = "common/gateway_process.rs"]
mod gateway_process;

use std::time::Duration;

use defender_simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use gateway_process::rss_mb;
use scan_gateway::{
    clock::Clock,
    grpc::pb::{self, scan_service_client::ScanServiceClient, scan_update::Event},
};
use tokio::{sync::mpsc, time::Instant};
use tonic::transport::Channel;

const FRESHNESS: Duration = Duration::from_secs(10);
/// How long each size is measured (`WATCH_BENCH_SECONDS` shortens it while investigating).
fn measure_time() -> Duration {
    std::env::var("WATCH_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs)
}
const CONNECTIONS: usize = 16;

struct Row {
    actions: usize,
    calls_per_minute: f64,
    per_action_polling: f64,
    rss_mb: f64,
    delays: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn token(base: &str, config: &SimulatorConfig) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/{}/oauth2/v2.0/token", config.tenant_id))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", config.client_id.as_str()),
            ("client_secret", "simulator-secret"),
            ("scope", "https://api.securitycenter.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("the simulator answers");
    let json: serde_json::Value = response.json().await.expect("a token");
    json["access_token"].as_str().expect("a token").to_owned()
}

/// Starts `n` scans directly at the simulator (the gateway only has to follow them), spread
/// over one refresh interval so their status changes fall at every phase of the interval.
async fn start_scans(base: &str, token: &str, handle: &SimulatorHandle, n: usize) -> Vec<String> {
    let http = reqwest::Client::new();
    let machines: Vec<String> = handle
        .machines()
        .into_iter()
        .filter(|m| m.online && m.supports_scan)
        .map(|m| m.id)
        .take(n)
        .collect();
    assert_eq!(machines.len(), n, "enough scannable machines");
    let mut ids = Vec::with_capacity(n);
    let batches = 20u32;
    let started = Instant::now();
    for (batch, chunk) in machines.chunks(n.div_ceil(batches as usize)).enumerate() {
        let batch = u32::try_from(batch).unwrap_or(batches);
        tokio::time::sleep_until(started + FRESHNESS * batch / batches).await;
        let calls = chunk.iter().map(|machine| {
            http.post(format!("{base}/api/machines/{machine}/runAntiVirusScan"))
                .bearer_auth(token)
                .json(&serde_json::json!({"Comment": "watch bench", "ScanType": "Quick"}))
                .send()
        });
        for response in futures_util::future::join_all(calls).await {
            let response = response.expect("the simulator answers");
            assert_eq!(response.status(), 201, "scan created");
            let json: serde_json::Value = response.json().await.expect("an action");
            ids.push(json["id"].as_str().expect("an id").to_owned());
        }
    }
    ids
}

async fn measure(actions: usize) -> Row {
    let mut config = SimulatorConfig::demo();
    config.machine_count = actions * 5 / 4 + 100;
    config.quota = vec![];
    // Statuses change during the measurement: Pending for 20 s, then a 30 s scan.
    config.pending_duration = Duration::from_secs(20);
    config.quick_scan_duration = Duration::from_secs(30);
    let simulator = Simulator::bind(
        "127.0.0.1:0".parse().expect("an address"),
        config.clone(),
        Clock::system(),
    )
    .await
    .expect("the simulator binds");
    let base = simulator.base_url();
    let handle = simulator.handle();
    tokio::spawn(simulator.run_until_stopped(std::future::pending()));

    // `WATCH_BENCH_WRAPPER="valgrind --tool=massif"` runs the gateway under a profiler.
    let wrapper = std::env::var("WATCH_BENCH_WRAPPER").unwrap_or_default();
    let mut command = gateway_process::gateway_command(&config, &base, &wrapper);
    command
        .env("SCAN_GATEWAY_POLL_INTERVAL", "10s")
        // 10,000 streams from one address: lift the per-caller limits.
        .env("SCAN_GATEWAY_MAX_STREAMS_PER_CALLER", "100000")
        .env("SCAN_GATEWAY_MAX_QUEUE", "100000")
        // As the container image sets it (see the Dockerfile).
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        // Allocator settings under study (glibc's MALLOC_ARENA_MAX and the like) pass through.
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("MALLOC_") || k == "GLIBC_TUNABLES"));
    let (mut gateway, pid, addr) = gateway_process::start(command).await;
    let rss_idle = rss_mb(pid);

    let token = token(&base, &config).await;
    let ids = start_scans(&base, &token, &handle, actions).await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a URL")
            .connect()
            .await
            .expect("the gateway accepts");
        clients.push(ScanServiceClient::new(channel));
    }

    // One stream per action; each reports the delay of every status change it sees.
    let (delays_tx, mut delays_rx) = mpsc::unbounded_channel::<f64>();
    for (i, id) in ids.iter().enumerate() {
        let mut client = clients[i % CONNECTIONS].clone();
        let request = pb::WatchScanRequest {
            action_id: id.clone(),
        };
        let delays = delays_tx.clone();
        let mut stream = client
            .watch_scan(request)
            .await
            .expect("a stream")
            .into_inner();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok(Some(message)) = stream.message().await {
                if let Some(Event::Action(action)) = message.update.and_then(|u| u.event) {
                    let changed = action.last_update_time.map(|t| {
                        time::OffsetDateTime::from_unix_timestamp_nanos(
                            i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos),
                        )
                        .expect("a time")
                    });
                    if !first && let Some(changed) = changed {
                        let delay = (time::OffsetDateTime::now_utc() - changed).as_seconds_f64();
                        let _ = delays.send(delay);
                    }
                    first = false;
                }
            }
        });
    }
    drop(delays_tx);
    let rss_streams_open = rss_mb(pid);
    eprintln!(
        "{actions} actions: gateway RSS {rss_idle:.1} MB idle, {rss_streams_open:.1} MB with every stream open"
    );

    let before = handle.stats();
    let started = Instant::now();
    tokio::time::sleep(measure_time()).await;
    let after = handle.stats();
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let calls = (after.list_actions + after.get_action) - (before.list_actions + before.get_action);
    let rss = rss_mb(pid).max(rss_streams_open);

    if wrapper.is_empty() {
        let _ = gateway.start_kill();
    } else {
        // A profiler writes its report when the process exits on its own: stop it as
        // Kubernetes would, and wait.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(120), gateway.wait()).await;
    }
    let mut delays = Vec::new();
    while let Ok(delay) = delays_rx.try_recv() {
        delays.push(delay);
    }
    delays.sort_by(f64::total_cmp);
    Row {
        actions,
        calls_per_minute: calls as f64 / minutes,
        per_action_polling: actions as f64 * 60.0 / FRESHNESS.as_secs_f64(),
        rss_mb: rss,
        delays,
    }
}

fn main() {
    // `cargo test --all-targets` runs bench targets too: only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("watch benchmark: run it with `cargo bench --bench watch`");
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // `WATCH_BENCH_SIZES=10000` measures one size only (the README's table uses both).
    let sizes: Vec<usize> = std::env::var("WATCH_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for size in sizes {
            rows.push(measure(size).await);
        }
        rows
    });
    println!(
        "watching actions at a 10 s freshness, one stream per action, for {} s",
        measure_time().as_secs()
    );
    println!(
        "{:>8} {:>18} {:>22} {:>16} {:>14} {:>12}",
        "actions",
        "status calls/min",
        "per-action polling",
        "gateway RSS MB",
        "delay median",
        "delay p99"
    );
    for row in rows {
        println!(
            "{:>8} {:>18.1} {:>22.0} {:>16.1} {:>13.2}s {:>11.2}s",
            row.actions,
            row.calls_per_minute,
            row.per_action_polling,
            row.rss_mb,
            percentile(&row.delays, 0.5),
            percentile(&row.delays, 0.99)
        );
    }
}
